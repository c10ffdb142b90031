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
	// PerPair is a prompt chunk's attention per query-key pair
	// (prefillPairs), in nanoseconds; 0: not modelled.
	PerPair float64
	// HostPerStep is the part of StepFixed that is the engine's host side
	// (scheduling, input preparation), where the GPU's part was measured
	// apart from it (0: not separated).
	HostPerStep time.Duration
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
	"h200": {
		Name:        "h200",
		Description: "NVIDIA H200 (141 GB HBM3e) serving Qwen2.5-0.5B-Instruct; GPU measured, host estimated",
		Source: "GPU measured: the model's architecture with random bf16 weights, each step captured in a CUDA graph " +
			"(docs/calibration/measure_unfused.py on an H200, 2026-11-30; 50 steps, fit within 15% of each (14.8% at an 8192-token prefill, whose attention grows with its square), docs/calibration.md): " +
			"3.51 ms fixed, 2.548 us per token, 6 ns per KV token; PyTorch's unfused kernels, not vLLM's. " +
			"Host estimated, not measured: 0.5 ms of scheduling per step, from vLLM's own profile of Llama 3 8B on an H100 " +
			"(blog.vllm.ai 2024-09-05: scheduling 29% and the GPU 38% of the time before v0.6, then overlapped and amortised); " +
			"vLLM's defaults for a card of 70 GiB or more (vllm/engine/arg_utils.py): max_num_seqs 1024, max_num_batched_tokens 8192",
		StepFixed: 4010745 * time.Nanosecond, PerToken: 2548 * time.Nanosecond, PerKVToken: 6 * time.Nanosecond,
		HostPerStep: 500 * time.Microsecond,
		GPUMemory:   140 * gib, Weights: qwenWeights, Overhead: 1 * gib, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 1024, MaxNumBatchedTokens: 8192, MaxModelLen: 32768,
		StartupDelay: 40 * time.Second, WakeTime: 200 * time.Millisecond,
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
// of the card (vLLM's --gpu-memory-utilization) at the profile's default
// knobs.
func (p Profile) KVBlocks(util float64) (int, error) {
	m, err := p.Plan(util, 0, 0, 0)
	return m.KVBlocks, err
}

// StepTime is the cost model: a step that computes tokens, reads kvTokens
// of KV cache and has pairs of prompt attention.
func (p Profile) StepTime(tokens, kvTokens, pairs int) time.Duration {
	return p.StepFixed + time.Duration(tokens)*p.PerToken + time.Duration(kvTokens)*p.PerKVToken + time.Duration(float64(pairs)*p.PerPair)
}

// Card is a GPU's datasheet figures that the cost model's terms scale by.
type Card struct {
	Name string
	// Bandwidth is the memory bandwidth in bytes per second.
	Bandwidth float64
	// FLOPS is the dense 16-bit matmul rate the engine's kernels use.
	FLOPS float64
}

// Datasheet figures (NVIDIA's product pages and datasheets).
var (
	// H200 SXM: 4.8 TB/s HBM3e; 989 TFLOPS dense BF16 tensor (1,979
	// with sparsity).
	H200 = Card{Name: "H200", Bandwidth: 4.8e12, FLOPS: 989e12}
	// GeForce GTX 1650 (TU117, GDDR5 edition): 128 GB/s; no tensor
	// cores, so FP16 at twice FP32's 2.98 TFLOPS. vLLM runs it in fp16
	// (no bf16 before compute capability 8.0) with Triton attention
	// (docs/engine-contract.md).
	GTX1650 = Card{Name: "GeForce GTX 1650", Bandwidth: 128e9, FLOPS: 5.97e12}
	// T4: 320 GB/s GDDR6; 65 TFLOPS FP16 tensor.
	T4 = Card{Name: "T4", Bandwidth: 320e9, FLOPS: 65e12}
)

// Derive scales a profile measured on card from to card to: the fixed
// term's weight reads (Weights over the bandwidth) by the bandwidth, the
// rest of it (kernel launches and latencies, which a CUDA graph replays
// alike) as it is; the per-token term (matmul FLOPs) by the FLOPS; the
// per-KV-token term (reading K and V) by the bandwidth; the host's share
// as it is. The memory, knobs and start times are the target's own (base).
func Derive(measured Profile, from, to Card, base Profile) Profile {
	readFrom := time.Duration(float64(measured.Weights) / from.Bandwidth * float64(time.Second))
	readTo := time.Duration(float64(measured.Weights) / to.Bandwidth * float64(time.Second))
	gpuFixed := measured.StepFixed - measured.HostPerStep
	launches := max(gpuFixed-readFrom, 0)
	p := base
	p.HostPerStep = measured.HostPerStep
	p.StepFixed = readTo + launches + measured.HostPerStep
	p.PerToken = time.Duration(float64(measured.PerToken) * from.FLOPS / to.FLOPS)
	p.PerKVToken = time.Duration(float64(measured.PerKVToken) * from.Bandwidth / to.Bandwidth)
	p.Source = fmt.Sprintf("derived from the measured %s profile by datasheet ratios, not measured on this card: "+
		"weight reads %s at %.0f GB/s plus %s of launches as measured plus %s host (estimated) = %s fixed; "+
		"%s per token x %.0f/%.2f TFLOPS = %s; %s per KV token x %.0f/%.0f GB/s = %s",
		measured.Name, readTo.Round(10*time.Microsecond), to.Bandwidth/1e9, launches.Round(10*time.Microsecond), measured.HostPerStep,
		p.StepFixed.Round(10*time.Microsecond), measured.PerToken, from.FLOPS/1e12, to.FLOPS/1e12, p.PerToken.Round(time.Microsecond),
		measured.PerKVToken, from.Bandwidth/1e9, to.Bandwidth/1e9, p.PerKVToken)
	return p
}

func init() {
	h := Profiles["h200"]
	for _, d := range []struct {
		name, base string
		card       Card
	}{{"gtx1650-derived", "gtx1650", GTX1650}, {"t4-derived", "t4", T4}} {
		p := Derive(h, H200, d.card, Profiles[d.base])
		p.Name = d.name
		p.Description = Profiles[d.base].Description + "; derived from the H200 measurement"
		Profiles[d.name] = p
	}
}
