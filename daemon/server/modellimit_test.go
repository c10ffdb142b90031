package server

import (
	"testing"
	"time"

	"github.com/llmlab/llmlab/daemon/config"
	"github.com/llmlab/llmlab/daemon/enginemodel"
)

// The model's limit follows the objective, and stays within min_inflight,
// max_inflight and the engine's max_num_seqs.
func TestModelLimit(t *testing.T) {
	// 10 ms a step plus 0.5 ms a token it carries (1 ms a sequence of 200 in and 200 out): 200 tokens take 2 s + 0.2 s per
	// sequence; at the 95th percentile before any spread is measured
	// (1.2x), 5 s fits 10 in flight and 2.5 s fits none.
	m := enginemodel.New(enginemodel.Seed{StepFixed: 10 * time.Millisecond, PerToken: 500 * time.Microsecond})
	// One answer at 256 in flight, on the prior's line: the limit may go
	// that far.
	m.Observe(enginemodel.Observation{Concurrency: 256, Total: 200 * (10*time.Millisecond + 256*time.Millisecond),
		Shape: enginemodel.Shape{MaxTokens: 200}, OutputTokens: 200})
	for _, tc := range []struct {
		name                  string
		slo, target           time.Duration
		lo, hi, maxNumSeqs, w int
	}{
		{"the objective", 5 * time.Second, 0, 1, 256, 0, 10},
		{"a target", 5 * time.Second, 3 * time.Second, 1, 256, 0, 2},
		{"max_num_seqs", 5 * time.Second, 0, 1, 256, 6, 6},
		{"max_inflight", 5 * time.Second, 0, 1, 4, 0, 4},
		{"min_inflight", 2500 * time.Millisecond, 0, 3, 256, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{}
			cfg.SLO.Latency = tc.slo
			cfg.Queue.TargetLatency = tc.target
			cfg.Queue.MinInflight, cfg.Queue.MaxInflight = tc.lo, tc.hi
			cfg.Engine.MaxNumSeqs = tc.maxNumSeqs
			if got := modelLimit(m, cfg, 0.95); got != tc.w {
				t.Errorf("modelLimit = %d, want %d", got, tc.w)
			}
		})
	}
}
