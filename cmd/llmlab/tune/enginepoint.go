// The grid, its points, and what is recorded of each point.

package tune

import (
	"fmt"
	"strconv"
	"time"

	"github.com/llmlab/llmlab/cmd/llmlab/bench"
)

// Grid is the sweep's values; every combination is a point.
type Grid struct {
	MaxNumSeqs           []int
	MaxNumBatchedTokens  []int
	MaxModelLen          []int
	GPUMemoryUtilization []float64
	// Inflight is llmlabd's in-flight limit: "seqs" (max_num_seqs),
	// "model" (chosen from the engine model, up to max_num_seqs), or a
	// number.
	Inflight    []string
	BatchWindow []time.Duration
}

// Point is one combination of the knobs.
type Point struct {
	MaxNumSeqs           int           `json:"max_num_seqs"`
	MaxNumBatchedTokens  int           `json:"max_num_batched_tokens"`
	MaxModelLen          int           `json:"max_model_len"`
	GPUMemoryUtilization float64       `json:"gpu_memory_utilization"`
	Inflight             string        `json:"inflight"`
	BatchWindow          time.Duration `json:"batch_window_ns"`
}

// Key names a point in the results file.
func (p Point) Key() string {
	return fmt.Sprintf("seqs=%d batched=%d len=%d util=%g inflight=%s window=%s", p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen,
		p.GPUMemoryUtilization, p.Inflight, p.BatchWindow)
}

func (p Point) engineKey() string {
	return fmt.Sprintf("%d/%d/%d/%g", p.MaxNumSeqs, p.MaxNumBatchedTokens, p.MaxModelLen, p.GPUMemoryUtilization)
}

// modeKey is what of the point llmlabd reads only when it starts: the
// in-flight limit's mode (queue.concurrency; the model's floor,
// queue.min_inflight, follows a reload).
func (p Point) modeKey() string {
	conc, _ := p.limit()
	return conc
}

// limit is the point's queue settings.
func (p Point) limit() (concurrency string, maxInflight int) {
	switch p.Inflight {
	case "seqs":
		return "fixed", p.MaxNumSeqs
	case "model":
		return "model", p.MaxNumSeqs
	}
	n, _ := strconv.Atoi(p.Inflight)
	return "fixed", n
}

// Point outcomes.
const (
	StatusOK      = "ok"      // measured
	StatusRefused = "refused" // the memory plan (or the configuration) cannot work: never started
	StatusCrashed = "crashed" // the engine failed to start, or died during the measurement
)

// Probe is one find-max step.
type Probe struct {
	Rate     float64       `json:"rate"`
	Seconds  float64       `json:"seconds"`
	Requests int           `json:"requests"`
	Pass     bool          `json:"pass"`
	Goodput  float64       `json:"goodput"`
	P95      time.Duration `json:"p95_ns"`
	Errors   float64       `json:"error_rate"`
	Invalid  bool          `json:"invalid,omitempty"` // the simulator lagged
}

// Result is a point's outcome.
type Result struct {
	Point
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Engine is what was tuned: "simulated <profile>" or the config file.
	Engine string `json:"engine"`
	// Sustainable is the highest rate that met the SLO (find-max), and
	// Summary that probe's figures.
	Sustainable float64       `json:"sustainable_rps"`
	Summary     bench.Summary `json:"summary"`
	Probes      []Probe       `json:"probes"`
	// KVTokens is the memory plan's KV cache; EngineMemory the engine's
	// memory, from NVML's peak (MemorySource "nvml") or the plan's share
	// ("plan": what vLLM takes at start).
	KVTokens     int64  `json:"kv_tokens"`
	EngineMemory int64  `json:"engine_memory_bytes"`
	MemorySource string `json:"memory_source"`
	// EngineKVTokens and EngineMaxModelLen are what the engine reported
	// once started: vllm:cache_config_info's num_gpu_blocks x block_size,
	// and /v1/models' max_model_len (0: not reported).
	EngineKVTokens    int64 `json:"engine_kv_tokens,omitempty"`
	EngineMaxModelLen int   `json:"engine_max_model_len,omitempty"`
	// Concurrency and FinalLimit are llmlabd's in-flight mode and limit
	// at the end of the point, from its /status.
	Concurrency  string  `json:"concurrency,omitempty"`
	FinalLimit   int     `json:"final_limit,omitempty"`
	StartSeconds float64 `json:"start_seconds,omitempty"`
	Seconds      float64 `json:"seconds"`
}

// Points expands the grid, the engine's knobs outermost so that
// consecutive points share an engine start where they can.
func (g Grid) Points() []Point {
	var out []Point
	for _, s := range g.MaxNumSeqs {
		for _, b := range g.MaxNumBatchedTokens {
			for _, l := range g.MaxModelLen {
				for _, u := range g.GPUMemoryUtilization {
					for _, i := range g.Inflight {
						for _, w := range g.BatchWindow {
							out = append(out, Point{s, b, l, u, i, w})
						}
					}
				}
			}
		}
	}
	return out
}
