package sim

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Profile is a GPU and model pair as the cost model sees it.
//
// Step time = StepFixed + PerToken x (tokens processed in the step)
// + PerKVToken x (KV-cache tokens read by the step's sequences).
// StepFixed is dominated by reading the weights once per step (memory
// bandwidth) plus kernel launches; PerToken by the matmul FLOPs of one
// token (about 2 x parameters); PerKVToken by reading one token's K and V
// for attention.
type Profile struct {
	Name        string
	Description string
	// Source says where each number came from.
	Source     string
	StepFixed  time.Duration
	PerToken   time.Duration
	PerKVToken time.Duration
	// GPUMemory is the card's memory; Weights and Overhead (activations,
	// CUDA graphs, allocator slack) come off the engine's share of it, and
	// the rest is KV cache at KVBytesPerToken.
	GPUMemory       int64
	Weights         int64
	Overhead        int64
	KVBytesPerToken int64
	// Defaults for vLLM's knobs on this card.
	MaxNumSeqs          int
	MaxNumBatchedTokens int
	MaxModelLen         int
	StartupDelay        time.Duration
	WakeTime            time.Duration
}

const gib = 1 << 30

// Qwen2.5-0.5B-Instruct: 494 M parameters in bf16 (0.99 GB); KV cache per
// token: 24 layers x 2 KV heads x 64 dims x 2 (K and V) x 2 bytes = 12 KiB.
const (
	qwenWeights = 988 << 20
	qwenKV      = 12 << 10
)

// Profiles are the shipped profiles, by name.
var Profiles = map[string]Profile{
	"gtx1650": {
		Name:        "gtx1650",
		Description: "GeForce GTX 1650 (4 GB GDDR5/6, Turing TU117) serving Qwen2.5-0.5B-Instruct",
		Source: "datasheet estimates, not yet measured: 128 GB/s memory bandwidth -> 0.99 GB of weights read per step = 7.7 ms, " +
			"plus about 2 ms of launches = 10 ms fixed; about 6 TFLOPS fp16 at about 65% in the large matmuls of a busy step, for 1 GFLOP per token = 0.25 ms per token; " +
			"12 KiB of KV per context token at 128 GB/s = 96 ns; 4 GiB card, 0.6 GiB of activations and graphs",
		StepFixed: 10 * time.Millisecond, PerToken: 250 * time.Microsecond, PerKVToken: 96 * time.Nanosecond,
		GPUMemory: 4 * gib, Weights: qwenWeights, Overhead: 600 << 20, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 256, MaxNumBatchedTokens: 2048, MaxModelLen: 2048,
		StartupDelay: 20 * time.Second, WakeTime: 300 * time.Millisecond,
	},
	"t4": {
		Name:        "t4",
		Description: "NVIDIA T4 (16 GB GDDR6, Turing TU104) serving Qwen2.5-0.5B-Instruct",
		Source: "datasheet estimates, not yet measured: 320 GB/s -> 3.1 ms of weight reads plus about 2 ms of launches = 5 ms fixed; " +
			"65 TFLOPS fp16 tensor at 25% for 1 GFLOP per token = 60 us per token; 12 KiB per KV token at 320 GB/s = 38 ns; " +
			"16 GiB card, 1 GiB of activations and graphs",
		StepFixed: 5 * time.Millisecond, PerToken: 60 * time.Microsecond, PerKVToken: 38 * time.Nanosecond,
		GPUMemory: 16 * gib, Weights: qwenWeights, Overhead: 1 * gib, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 256, MaxNumBatchedTokens: 2048, MaxModelLen: 4096,
		StartupDelay: 15 * time.Second, WakeTime: 200 * time.Millisecond,
	},
	"instant": {
		Name:        "instant",
		Description: "no GPU cost at all: every step takes 50 us (for tests and proxy benchmarks)",
		Source:      "not a model of any card",
		StepFixed:   50 * time.Microsecond,
		GPUMemory:   64 * gib, Weights: qwenWeights, Overhead: 0, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 1024, MaxNumBatchedTokens: 8192, MaxModelLen: 4096,
	},
}

// ProfileNames lists the shipped profiles.
func ProfileNames() string {
	var names []string
	for n := range Profiles {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// KVBlocks is the number of 16-token KV blocks that fit the engine's share
// of the card (vLLM's --gpu-memory-utilization).
func (p Profile) KVBlocks(util float64) (int, error) {
	budget := int64(float64(p.GPUMemory)*util) - p.Weights - p.Overhead
	if budget < 16*p.KVBytesPerToken {
		return 0, fmt.Errorf("--gpu-memory-utilization %.2f of %.1f GiB leaves no room for the KV cache after %.2f GiB of weights and %.2f GiB of overhead",
			util, float64(p.GPUMemory)/gib, float64(p.Weights)/gib, float64(p.Overhead)/gib)
	}
	return int(budget / (BlockSize * p.KVBytesPerToken)), nil
}

// StepTime is the cost model.
func (p Profile) StepTime(tokens, kvTokens int) time.Duration {
	return p.StepFixed + time.Duration(tokens)*p.PerToken + time.Duration(kvTokens)*p.PerKVToken
}
