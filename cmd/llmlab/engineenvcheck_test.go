package main

import (
	"strings"
	"testing"

	"github.com/llmlab/llmlab/daemon/config"
)

// check-config warns where engine.env's LLMLAB_VLLM_ARGS, which wins on
// vLLM's command line, disagrees with what llmlabd sets.
func TestEngineEnvWarnings(t *testing.T) {
	cfg := &config.Config{}
	cfg.Queue.MaxInflight = 64
	cfg.Engine.MaxNumSeqs = 16
	cfg.Engine.SchedulingPolicy = config.PolicyFCFS
	for _, tc := range []struct {
		env  string
		want []string
	}{
		{"LLMLAB_MODEL=Qwen/Qwen2.5-0.5B-Instruct\n", nil},
		{`LLMLAB_VLLM_ARGS="--max-num-queued-reqs 32 --max-num-seqs 16"` + "\n", []string{"--max-num-queued-reqs 32, below queue.max_inflight = 64"}},
		{"LLMLAB_VLLM_ARGS=--max-num-queued-reqs=200 --max-num-seqs=32\n", []string{"sets --max-num-seqs 32 and llmlab.toml engine.max_num_seqs = 16"}},
		{"# LLMLAB_VLLM_ARGS=--max-num-queued-reqs 1\n", nil},
		{"LLMLAB_VLLM_ARGS=--max-model-len 4096\n", nil}, // engine.max_model_len unset: vLLM's own
		{"LLMLAB_VLLM_ARGS=--scheduling-policy priority\n", []string{"sets --scheduling-policy priority and llmlab.toml engine.scheduling_policy = \"fcfs\": the engine schedules by each request's priority but llmlab sends none"}},
		{"LLMLAB_VLLM_ARGS=--scheduling-policy=fcfs\n", nil},
		{"LLMLAB_VLLM_ARGS=--scheduling-policy priority --scheduling-policy fcfs\n", nil}, // the last one counts
	} {
		got := engineEnvWarnings(strings.NewReader(tc.env), cfg)
		if len(got) != len(tc.want) {
			t.Errorf("%q: warnings %q, want %d", tc.env, got, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%q: warning %q, want it to say %q", tc.env, got[i], w)
			}
		}
	}
	prio := *cfg
	prio.Engine.SchedulingPolicy = config.PolicyPriority
	got := engineEnvWarnings(strings.NewReader("LLMLAB_VLLM_ARGS=--scheduling-policy fcfs\n"), &prio)
	if len(got) != 1 || !strings.Contains(got[0], "llmlab sends each request's class as its priority, which this engine ignores") {
		t.Errorf("engine.scheduling_policy = \"priority\" and --scheduling-policy fcfs in LLMLAB_VLLM_ARGS: warnings %q, want that the engine ignores the priority", got)
	}
}
