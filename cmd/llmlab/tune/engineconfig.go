// The configurations llmlabd runs each point with.

package tune

import (
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/llmlab/llmlab/cmd/llmlab/sim"
	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/internal/freeport"
)

// baseConfig is the configuration every point starts from, and the
// engine's URL: the simulator behind llmlabd, or the operator's file.
func (o EngineOptions) baseConfig(dir string, prof sim.Profile) (map[string]any, string, error) {
	if o.Config != "" {
		base := map[string]any{}
		if _, err := toml.DecodeFile(o.Config, &base); err != nil {
			return nil, "", fmt.Errorf("--config: %w", err)
		}
		cfg, err := config.Load(o.Config, true)
		if err != nil {
			return nil, "", err
		}
		if len(cfg.Engine.Command) == 0 && cfg.Engine.Unit == "" {
			return nil, "", fmt.Errorf("%s manages no engine (engine.command and engine.unit are empty): llmlabd cannot restart it with each point's knobs", o.Config)
		}
		engine := section(base, "engine")
		if cfg.Engine.Unit != "" && cfg.Engine.RuntimeEnv == "" {
			// Where llmlab-vllm.service reads llmlabd's settings
			// (EnvironmentFile=-/run/llmlab/engine.env); llmlabd started
			// here has no systemd runtime directory to find it by.
			engine["runtime_env"] = "/run/llmlab/engine.env"
		}
		return base, strings.TrimRight(cfg.Engine.URL.String(), "/"), nil
	}
	// The simulator is told its port: llmlabd starts it, again at each
	// point whose engine differs, on the engine.url written here.
	addr, err := freeport.Addr()
	if err != nil {
		return nil, "", err
	}
	host, port, _ := net.SplitHostPort(addr)
	command := []any{o.Tool, "sim", "--profile", prof.Name, "--host", host, "--port", port, "--startup-delay", o.StartupDelay.String()}
	if o.GPUMemoryGiB > 0 {
		command = append(command, "--gpu-memory-gib", strconv.FormatFloat(o.GPUMemoryGiB, 'g', -1, 64))
	}
	for _, a := range o.SimArgs {
		command = append(command, a)
	}
	base := map[string]any{
		"engine": map[string]any{"url": "http://" + addr, "models": []any{model}, "command": command,
			"start_timeout": "2m", "expected_start_time": o.StartupDelay.String(), "max_cold_start_wait": "2m"},
		"gpu": map[string]any{"enabled": false},
	}
	return base, "http://" + addr, nil
}

// renderConfig is base with the point's settings and tune's own: its
// listener, a state folder, no exit, sleep or stop on idle, no textfile,
// agent or access log.
func renderConfig(base map[string]any, p Point, listen, stateDir, metricsListen string, slo time.Duration, budget uint64) (string, error) {
	c := deepCopy(base)
	gw := section(c, "gateway")
	gw["listen"], gw["state_dir"], gw["exit_idle_timeout"] = listen, stateDir, "0s"
	eng := section(c, "engine")
	eng["idle_timeout"], eng["sleep_after"], eng["deep_sleep_after"] = "0s", "0s", "0s"
	eng["max_num_seqs"], eng["max_num_batched_tokens"], eng["max_model_len"] = p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen
	g := section(c, "gpu")
	g["memory_fraction"], g["memory_budget"] = p.GPUMemoryUtilization, ""
	if budget > 0 {
		g["memory_budget"] = strconv.FormatUint(uint64(p.GPUMemoryUtilization*float64(budget)), 10)
	}
	q := section(c, "queue")
	conc, limit := p.limit()
	q["concurrency"], q["max_inflight"], q["batch_window"] = conc, limit, p.BatchWindow.String()
	q["max_queued"] = 1024
	if conc == "model" {
		q["min_inflight"] = min(4, limit)
	}
	if slo > 0 {
		section(c, "slo")["latency"] = slo.String()
		q["max_wait"] = (slo * 4 / 5).String()
	}
	m := section(c, "metrics")
	m["listen"], m["textfile"] = metricsListen, ""
	section(c, "balancer")["agent_listen"] = ""
	l := section(c, "log")
	l["format"], l["access_log"] = "text", false
	var b bytes.Buffer
	if err := toml.NewEncoder(&b).Encode(c); err != nil {
		return "", err
	}
	return b.String(), nil
}

func section(m map[string]any, name string) map[string]any {
	if s, ok := m[name].(map[string]any); ok {
		return s
	}
	s := map[string]any{}
	m[name] = s
	return s
}

func deepCopy(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		if s, ok := v.(map[string]any); ok {
			v = deepCopy(s)
		}
		out[k] = v
	}
	return out
}
