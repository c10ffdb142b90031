package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/enginemetrics"
	"github.com/llmlab/llmlab/daemon/gateway"
	"github.com/llmlab/llmlab/daemon/supervisor"
)

// engineBackend returns how the engine cfg names is run, or nil when it is
// managed elsewhere. A child engine's environment and stop grace are read
// from the running configuration when it starts and stops.
func (d *daemon) engineBackend(cfg *config.Config) supervisor.Backend {
	switch {
	case cfg.Engine.Unit != "":
		return &supervisor.Systemd{Unit: cfg.Engine.Unit, Log: d.log.With("component", "supervisor")}
	case len(cfg.Engine.Command) > 0:
		grace := func() time.Duration { return d.st.cfgNow().Engine.StopGrace }
		return &supervisor.Exec{Argv: cfg.Engine.Command, Grace: grace, Output: d.o.Stderr, Env: d.engineEnv}
	}
	return nil
}

// runtimeEnv is where the engine's runtime settings go: engine.runtime_env,
// else the service's runtime directory under systemd, else nowhere.
func runtimeEnv(cfg *config.Config) string {
	if cfg.Engine.RuntimeEnv != "" {
		return cfg.Engine.RuntimeEnv
	}
	if dir, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":"); dir != "" {
		return filepath.Join(dir, "engine.env")
	}
	return ""
}

// engineKnobs is the engine's part of the environment that follows the
// configuration: LLMLAB_MAX_NEW_TOKENS (limits.max_tokens), the engine's
// own bound on what it holds (LLMLAB_MAX_NUM_QUEUED_REQS, engineQueueBound),
// sleep mode, the priority policy (LLMLAB_SCHEDULING_POLICY, only when
// engine.scheduling_policy is "priority": fcfs is vLLM's default), and
// vLLM's knobs that engine.* sets (none for 0, the engine's default).
func engineKnobs(c *config.Config) []string {
	env := []string{fmt.Sprintf("LLMLAB_MAX_NEW_TOKENS=%d", c.Limits.MaxTokens),
		fmt.Sprintf("LLMLAB_MAX_NUM_QUEUED_REQS=%d", engineQueueBound(c))}
	if c.Engine.SleepMode() {
		env = append(env, "LLMLAB_ENABLE_SLEEP_MODE=1")
	}
	if c.Engine.EnginePriority() {
		env = append(env, "LLMLAB_SCHEDULING_POLICY="+config.PolicyPriority)
	}
	for _, k := range []struct {
		name string
		v    int
	}{{"LLMLAB_MAX_NUM_SEQS", c.Engine.MaxNumSeqs}, {"LLMLAB_MAX_NUM_BATCHED_TOKENS", c.Engine.MaxNumBatchedTokens}, {"LLMLAB_MAX_MODEL_LEN", c.Engine.MaxModelLen}} {
		if k.v > 0 {
			env = append(env, fmt.Sprintf("%s=%d", k.name, k.v))
		}
	}
	return env
}

// engineQueueBound is vLLM's --max-num-queued-reqs for the engine llmlabd
// manages: a second line behind llmlab's own admission, so that traffic
// reaching the engine by another path (a client of its port, a second
// gateway) cannot grow the engine's queue without bound. vLLM counts the
// sequences waiting and running against it (PR #49445), and llmlabd never
// has more than queue.max_inflight in the engine: twice that leaves llmlab
// all its slots and as many again for anyone else.
func engineQueueBound(c *config.Config) int { return 2 * c.Queue.MaxInflight }

// engineEnv is the engine's environment for its next start, from the
// running configuration: the GPU share (NVML's readings turn a budget into
// one) and the knobs.
func (d *daemon) engineEnv() []string {
	c := d.st.cfgNow()
	var env []string
	if d.adm != nil {
		env = d.adm.Env()
	}
	if len(env) == 0 && c.GPU.MemoryBudget == 0 {
		// No GPU readings to turn a budget into a share: the
		// configured fraction, as the engine would be told with them.
		env = append(env, fmt.Sprintf("LLMLAB_GPU_MEMORY_UTILIZATION=%g", c.GPU.MemoryFraction))
	}
	return append(env, engineKnobs(c)...)
}

// beforeEngineStart is the supervisor's BeforeStart: the GPU admission
// may refuse the start; then the engine's environment is written where
// the running configuration says.
func (d *daemon) beforeEngineStart(ctx context.Context) error {
	if d.adm != nil {
		if err := d.adm.BeforeStart(ctx); err != nil {
			return err
		}
	}
	return writeEngineEnv(runtimeEnv(d.st.cfgNow()), d.engineEnv())
}

// writeEngineEnv writes the engine's runtime settings for the engine unit
// (EnvironmentFile=-/run/llmlab/engine.env) before each start: the GPU
// share, and LLMLAB_MAX_NEW_TOKENS (limits.max_tokens), which llmlab-engine
// passes to vLLM as its server-wide output cap. Nothing when path is "".
func writeEngineEnv(path string, env []string) error {
	if path == "" {
		return nil
	}
	content := "# Written by llmlabd before each engine start; read by llmlab-vllm.service.\n" + strings.Join(env, "\n") + "\n"
	tmp := path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("writing the engine's environment: %w", err)
	}
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("writing the engine's environment: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing the engine's environment: %w", err)
	}
	return nil
}

// supervisorConfig extracts the supervisor's part of cfg, with the
// daemon's hooks; the readiness probe is GET engine.ready_path (vLLM's
// /health answers once it serves) answering 2xx with engine.ready_match in
// its body when that is set. A reload hands the supervisor a new one.
func (d *daemon) supervisorConfig(cfg *config.Config) supervisor.Config {
	health := cfg.Engine.URL.JoinPath(cfg.Engine.ReadyPath).String()
	match := []byte(cfg.Engine.ReadyMatch)
	client := &http.Client{Timeout: time.Second}
	post := func(ctx context.Context, path, query, body string) error {
		pu := cfg.Engine.URL.JoinPath(path)
		pu.RawQuery = query
		u := pu.String()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
		if err != nil {
			return err
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := (&http.Client{}).Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("POST %s: %s", u, resp.Status)
		}
		return nil
	}
	sc := supervisor.Config{
		SleepAfter:     cfg.Engine.SleepAfter,
		DeepSleepAfter: cfg.Engine.DeepSleepAfter,
		// mode=wait lets any request still in the engine finish (vLLM's
		// default, abort, would abort it:
		// vllm/entrypoints/serve/dev/sleep/api_router.py).
		Sleep: func(ctx context.Context, level int) error {
			return post(ctx, "/sleep", fmt.Sprintf("level=%d&mode=wait", level), "")
		},
		WakeUp: func(ctx context.Context, level int) error {
			if level < 2 {
				return post(ctx, "/wake_up", "", "")
			}
			return wakeFromLevel2(ctx, post)
		},
		// Level 1 only where the host can hold the weights (hostmemory.go).
		HostHoldsWeights: d.hostHoldsWeights,
		Probe: func(ctx context.Context) bool {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
			if err != nil {
				return false
			}
			resp, err := client.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				return false
			}
			if len(match) == 0 {
				return true
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			return bytes.Contains(body, match)
		},
		ProbeInterval: 50 * time.Millisecond,
		IdleTimeout:   cfg.Engine.IdleTimeout,
		StartTimeout:  cfg.Engine.StartTimeout,
		ExpectedStart: cfg.Engine.ExpectedStartTime,
		BeforeStart:   d.beforeEngineStart,
	}
	if d.adm != nil {
		sc.OnReady, sc.AfterStop = d.adm.NoteRunning, d.adm.AfterStop
	}
	return sc
}

// wakeFromLevel2 wakes an engine asleep at vLLM's level 2, whose weights
// were discarded: a bare POST /wake_up would map their memory back empty
// and resume the scheduler on it (vllm/device_allocator/cumem.py, wake_up;
// vllm/v1/engine/core.py, wake_up), so the weights' memory is woken alone,
// the weights reloaded from disk (the worker's reload_weights through
// /collective_rpc: vllm/v1/worker/gpu_model_runner.py), and the KV cache
// woken last, which resumes the scheduler (docs/features/sleep_mode.md).
func wakeFromLevel2(ctx context.Context, post func(ctx context.Context, path, query, body string) error) error {
	if err := post(ctx, "/wake_up", "tags=weights", ""); err != nil {
		return err
	}
	if err := post(ctx, "/collective_rpc", "", `{"method":"reload_weights"}`); err != nil {
		return err
	}
	return post(ctx, "/wake_up", "tags=kv_cache", "")
}

// engineReady reports whether the engine serves: ready, or managed
// outside llmlab (always on).
func (d *daemon) engineReady() bool {
	s := d.engine.State()
	return s == supervisor.Ready || s == supervisor.External
}

// engineSignals are the engine's own readings the saturation hold acts
// on (d.scraper's).
func (d *daemon) engineSignals() enginemetrics.Signals {
	r := d.scraper.Latest()
	switch {
	case r.At.IsZero():
		return enginemetrics.Signals{} // no readings: an engine without metrics
	case !d.engineReady():
		return enginemetrics.Signals{Known: true, Waiting: r.Waiting, KVUsage: r.KVUsage}
	}
	switch d.scraper.Freshness(r, time.Now()) {
	case enginemetrics.Stale:
		return enginemetrics.Signals{Known: true, Stale: true}
	case enginemetrics.Expired:
		// Readings stopped long ago: hold no longer (the scraper logs it
		// once).
		return enginemetrics.Signals{}
	}
	return enginemetrics.Signals{Known: true, Waiting: r.Waiting, KVUsage: r.KVUsage}
}

// holdWhileSaturated holds dispatching while the ready engine reports
// itself saturated (its KV cache full with requests waiting inside it, or
// its readings stale).
func holdWhileSaturated(ctx context.Context, gw *gateway.Gateway, every time.Duration, signals func() enginemetrics.Signals, ready func() bool) {
	t := time.NewTicker(every)
	defer t.Stop()
	held := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			h := ready() && signals().Saturated()
			if h != held {
				gw.SetHold(h)
				held = h
			}
		}
	}
}

// externalEngine is an engine managed outside llmlab: always on.
type externalEngine struct{}

func (externalEngine) Wake()                   {}
func (externalEngine) State() supervisor.State { return supervisor.External }
