package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/llmlab/llmlab/daemon/config"
)

// engineEnvPath is the operator's engine settings file, which
// llmlab-vllm.service reads before llmlabd's own (/run/llmlab/engine.env).
const engineEnvPath = "/etc/llmlab/engine.env"

// engineEnvWarnings reads the engine's settings file (KEY=VALUE lines, as
// systemd's EnvironmentFile= reads them) and says where the vLLM flags in
// its LLMLAB_VLLM_ARGS, which come last on vLLM's command line and so
// win, disagree with what llmlabd sets from cfg.
func engineEnvWarnings(r io.Reader, cfg *config.Config) []string {
	var args []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") || strings.TrimSpace(k) != "LLMLAB_VLLM_ARGS" {
			continue
		}
		args = strings.Fields(strings.Trim(strings.TrimSpace(v), `"'`))
	}
	// value is the last value given to the flag name, as vLLM's argument
	// parser keeps it.
	value := func(name string) (string, bool) {
		v, found := "", false
		for i, a := range args {
			if s, ok := strings.CutPrefix(a, name+"="); ok {
				v, found = s, true
			} else if a == name && i+1 < len(args) {
				v, found = args[i+1], true
			}
		}
		return v, found
	}
	flag := func(name string) (int, bool) {
		v, ok := value(name)
		if !ok {
			return 0, false
		}
		n, err := strconv.Atoi(v)
		return n, err == nil
	}
	var out []string
	if p, ok := value("--scheduling-policy"); ok && p != cfg.Engine.SchedulingPolicy {
		why := "llmlab sends each request's class as its priority, which this engine ignores (an older vLLM refuses it): batch work does not yield inside the engine"
		if p == config.PolicyPriority {
			why = "the engine schedules by each request's priority but llmlab sends none: every request is priority 0, first come first served, and a client that reaches the engine by another path can overtake llmlab's work"
		}
		out = append(out, fmt.Sprintf("LLMLAB_VLLM_ARGS sets --scheduling-policy %s and llmlab.toml engine.scheduling_policy = %q: %s; set engine.scheduling_policy instead (llmlabd passes it to the engine)", p, cfg.Engine.SchedulingPolicy, why))
	}
	if n, ok := flag("--max-num-queued-reqs"); ok && n < cfg.Queue.MaxInflight {
		out = append(out, fmt.Sprintf("LLMLAB_VLLM_ARGS sets --max-num-queued-reqs %d, below queue.max_inflight = %d: the engine would refuse llmlab's own requests with 503 (llmlabd passes %d, twice max_inflight; the flag in LLMLAB_VLLM_ARGS wins)",
			n, cfg.Queue.MaxInflight, 2*cfg.Queue.MaxInflight))
	}
	for _, k := range []struct {
		flag, key string
		v         int
	}{{"--max-num-seqs", "engine.max_num_seqs", cfg.Engine.MaxNumSeqs}, {"--max-num-batched-tokens", "engine.max_num_batched_tokens", cfg.Engine.MaxNumBatchedTokens},
		{"--max-model-len", "engine.max_model_len", cfg.Engine.MaxModelLen}} {
		if n, ok := flag(k.flag); ok && k.v > 0 && n != k.v {
			out = append(out, fmt.Sprintf("LLMLAB_VLLM_ARGS sets %s %d and llmlab.toml %s = %d: the engine runs with %d (LLMLAB_VLLM_ARGS comes last and wins); set one of them", k.flag, n, k.key, k.v, n))
		}
	}
	return out
}
