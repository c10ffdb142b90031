package sim

import (
	"fmt"
	"math"
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
	// WakeTime is a wake-up from sleep level 1 (the weights copied back
	// from host memory, the KV cache mapped again).
	WakeTime time.Duration
	// DiskReadRate is how fast the weights are read back from disk after a
	// sleep at level 2 (vLLM's reload_weights), in bytes per second; 0:
	// DefaultDiskReadRate.
	DiskReadRate float64
}

// DefaultDiskReadRate is the rate the weights are read back from disk at
// after a level-2 sleep, 1 GiB/s: between a SATA SSD's sequential read
// (about 0.55 GB/s) and a PCIe 3 NVMe's (about 3 GB/s), and below what the
// page cache gives when the weights are still cached from the start;
// reload_weights also copies each tensor to the GPU and processes it,
// which this rate is taken to include. A stated assumption, not a
// measurement.
const DefaultDiskReadRate = 1 << 30

// ReloadTime is vLLM's reload_weights: the weights read from disk.
func (p Profile) ReloadTime() time.Duration {
	rate := p.DiskReadRate
	if rate <= 0 {
		rate = DefaultDiskReadRate
	}
	return time.Duration(float64(p.Weights) / rate * float64(time.Second))
}

// DeepWakeTime is a wake-up from sleep level 2: the weights' memory mapped
// again, the weights reloaded from disk, the KV cache mapped again
// (WakeTime plus ReloadTime).
func (p Profile) DeepWakeTime() time.Duration { return p.WakeTime + p.ReloadTime() }

const gib = 1 << 30

// Qwen2.5-0.5B-Instruct: 494 M parameters in bf16 (0.99 GB); KV cache per
// token: 24 layers x 2 KV heads x 64 dims x 2 (K and V) x 2 bytes = 12 KiB.
const (
	qwenWeights = 988 << 20
	qwenKV      = 12 << 10
)

// Profiles are the shipped profiles, by name: h100 measured (its GPU
// side), the others derived from it by datasheet ratios (init, Derive),
// and instant.
var Profiles = map[string]Profile{
	"h100": {
		Name:        "h100",
		Description: "NVIDIA H100 SXM (80 GB HBM3) serving Qwen2.5-0.5B-Instruct; GPU measured with vLLM's kernel structure, host estimated",
		Source: "GPU measured: the model's architecture with random bf16 weights in vLLM's kernel structure (merged QKV and gate_up GEMMs, " +
			"fused norms and activation compiled, one rotary kernel, a cache write, FlashAttention, decode in CUDA graphs; " +
			"docs/calibration/measure.py on an H100, 2026-12-07; 50 steps, docs/calibration/h100-fit.md): " +
			"1.254 ms fixed, 1.22 us per token, 4 ns per KV token, 0.323 ns per prompt attention pair; " +
			"the fit is within 15% of 46 of the 50 steps; one to eight sequences at 2048 tokens of context take 15-18% longer than it says " +
			"(PyTorch's decode attention does not split a long context among the SMs, vLLM's FlashAttention does: docs/calibration.md). " +
			"Host estimated, not measured: 0.5 ms of scheduling per step, from vLLM's own profile of Llama 3 8B on an H100 " +
			"(blog.vllm.ai 2024-09-05: scheduling 29% and the GPU 38% of the time before v0.6, then overlapped and amortised); " +
			"vLLM's defaults for a card of 70 GiB or more (vllm/engine/arg_utils.py): max_num_seqs 1024, max_num_batched_tokens 8192",
		StepFixed: 1753831 * time.Nanosecond, PerToken: 1220 * time.Nanosecond, PerKVToken: 4 * time.Nanosecond, PerPair: 0.323,
		HostPerStep: 500 * time.Microsecond,
		GPUMemory:   79 * gib, Weights: qwenWeights, Overhead: 1 * gib, KVBytesPerToken: qwenKV,
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
	// Clock is the SMs' boost clock in Hz: a kernel's launch and its
	// latency-bound start and end run at it.
	Clock float64
}

// Datasheet figures (NVIDIA's product pages and datasheets).
var (
	// H100 SXM5 80 GB: 3.35 TB/s HBM3; 989 TFLOPS dense BF16 tensor;
	// boost clock 1.98 GHz (the measured card: 1980 MHz, NVML's
	// clocks.max.sm).
	H100 = Card{Name: "H100", Bandwidth: 3.35e12, FLOPS: 989e12, Clock: 1.98e9}
	// H200 SXM: 4.8 TB/s HBM3e; the H100's chip and clock, so its FLOPS.
	H200 = Card{Name: "H200", Bandwidth: 4.8e12, FLOPS: 989e12, Clock: 1.98e9}
	// GeForce GTX 1650 (TU117, GDDR5 edition): 128 GB/s; no tensor
	// cores, so FP16 at twice FP32's 2.98 TFLOPS; boost clock 1.665 GHz.
	// vLLM runs it in fp16 (no bf16 before compute capability 8.0) with
	// Triton attention (docs/engine-contract.md).
	GTX1650 = Card{Name: "GeForce GTX 1650", Bandwidth: 128e9, FLOPS: 5.97e12, Clock: 1.665e9}
	// T4: 320 GB/s GDDR6; 65 TFLOPS FP16 tensor; boost clock 1.59 GHz.
	T4 = Card{Name: "T4", Bandwidth: 320e9, FLOPS: 65e12, Clock: 1.59e9}
)

// Derive scales a profile measured on card from to card to:
//   - the fixed term's weight reads (Weights over the bandwidth) by the
//     bandwidth;
//   - the rest of the GPU's fixed term (about 12 kernels a layer, each
//     launched from a CUDA graph and bound by its latency, not by FLOPS or
//     bytes) by the SM clock: a launch on a GTX 1650 is not an H100's, but
//     a graph replays the same kernels, so the same number of
//     latency-bound cycles;
//   - the per-token term (matmul FLOPs) and the prompt attention's per
//     pair term (its multiplies) by the FLOPS;
//   - the per-KV-token term (reading K and V) by the bandwidth;
//   - the host's share as it is.
//
// The memory, knobs and start times are the target's own (base).
func Derive(measured Profile, from, to Card, base Profile) Profile {
	readFrom := time.Duration(float64(measured.Weights) / from.Bandwidth * float64(time.Second))
	readTo := time.Duration(float64(measured.Weights) / to.Bandwidth * float64(time.Second))
	gpuFixed := measured.StepFixed - measured.HostPerStep
	launchesFrom := max(gpuFixed-readFrom, 0)
	launches := time.Duration(float64(launchesFrom) * from.Clock / to.Clock)
	p := base
	p.HostPerStep = measured.HostPerStep
	p.StepFixed = readTo + launches + measured.HostPerStep
	p.PerToken = time.Duration(math.Round(float64(measured.PerToken) * from.FLOPS / to.FLOPS))
	p.PerKVToken = time.Duration(math.Round(float64(measured.PerKVToken) * from.Bandwidth / to.Bandwidth))
	p.PerPair = math.Round(measured.PerPair*from.FLOPS/to.FLOPS*1000) / 1000
	p.Source = fmt.Sprintf("derived from the measured %s profile by datasheet ratios, not measured on this card: "+
		"weight reads %s at %.0f GB/s plus %s of latency-bound kernels (%s measured at %.2f GHz, at %.3f GHz) plus %s host (estimated) = %s fixed; "+
		"%s per token x %.0f/%.2f TFLOPS = %s (as efficient as the measured card's matmuls, which a card without tensor cores may not be); "+
		"%s per KV token x %.0f/%.0f GB/s = %s; %.3f ns per prompt attention pair x the FLOPS = %.3f ns",
		measured.Name, readTo.Round(10*time.Microsecond), to.Bandwidth/1e9, launches.Round(10*time.Microsecond),
		launchesFrom.Round(10*time.Microsecond), from.Clock/1e9, to.Clock/1e9, measured.HostPerStep,
		p.StepFixed.Round(10*time.Microsecond), measured.PerToken, from.FLOPS/1e12, to.FLOPS/1e12, p.PerToken.Round(time.Microsecond),
		measured.PerKVToken, from.Bandwidth/1e9, to.Bandwidth/1e9, p.PerKVToken, measured.PerPair, p.PerPair)
	return p
}

// The derived profiles' own parts: the card's memory, vLLM's defaults for
// it and its start times.
var (
	gtx1650Base = Profile{
		Description: "GeForce GTX 1650 (4 GB GDDR5/6, Turing TU117) serving Qwen2.5-0.5B-Instruct",
		GPUMemory:   4 * gib, Weights: qwenWeights, Overhead: 600 << 20, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 256, MaxNumBatchedTokens: 2048, MaxModelLen: 2048,
		StartupDelay: 20 * time.Second, WakeTime: 300 * time.Millisecond,
	}
	t4Base = Profile{
		Description: "NVIDIA T4 (16 GB GDDR6, Turing TU104) serving Qwen2.5-0.5B-Instruct",
		GPUMemory:   16 * gib, Weights: qwenWeights, Overhead: 1 * gib, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 256, MaxNumBatchedTokens: 2048, MaxModelLen: 4096,
		StartupDelay: 15 * time.Second, WakeTime: 200 * time.Millisecond,
	}
	h200Base = Profile{
		Description: "NVIDIA H200 (141 GB HBM3e) serving Qwen2.5-0.5B-Instruct",
		GPUMemory:   140 * gib, Weights: qwenWeights, Overhead: 1 * gib, KVBytesPerToken: qwenKV,
		MaxNumSeqs: 1024, MaxNumBatchedTokens: 8192, MaxModelLen: 32768,
		StartupDelay: 40 * time.Second, WakeTime: 200 * time.Millisecond,
	}
)

// init derives the cards' profiles from the H100's. gtx1650 and t4 are the
// derived ones under their short names too (the -derived names are kept
// for the commands in docs/ that used them).
func init() {
	h := Profiles["h100"]
	for _, d := range []struct {
		names []string
		base  Profile
		card  Card
	}{{[]string{"gtx1650", "gtx1650-derived"}, gtx1650Base, GTX1650}, {[]string{"t4", "t4-derived"}, t4Base, T4}, {[]string{"h200"}, h200Base, H200}} {
		p := Derive(h, H100, d.card, d.base)
		p.Description = d.base.Description + "; derived from the H100 measurement"
		for _, name := range d.names {
			p.Name = name
			Profiles[name] = p
		}
	}
}
