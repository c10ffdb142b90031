package sim

import "fmt"

// Qwen2.5-0.5B-Instruct's shape, as the memory plan reads it (its
// published config.json).
const (
	qwenVocab = 151936
	// qwenActivation is the peak activation memory per token of a step, an
	// estimate from the shape: one layer's hidden states, its QKV and the
	// MLP's gate and up projections (2 x 4864) and their product, in 16-bit
	// floats, with the allocator's slack: about 36 KiB.
	qwenActivation = 36 << 10
	// samplerBytes is the sampler's memory per sequence of a step: the
	// logits over the vocabulary in fp32 and one working copy of them
	// (softmax, top-p/top-k), 8 bytes x vocabulary.
	samplerBytes = 8 * qwenVocab
)

// MemoryPlan is how vLLM divides the engine's share of the card when it
// starts (vllm/v1/worker/gpu_worker.py, determine_available_memory): the
// weights, the peak of a profiling step (activations for
// max_num_batched_tokens tokens and the sampler for up to max_num_seqs
// sequences: vllm/v1/worker/gpu_model_runner.py, profile_run), the rest of
// the runtime's overhead, and what remains as KV cache.
type MemoryPlan struct {
	Share    int64 // --gpu-memory-utilization x the card
	Weights  int64
	Overhead int64 // activations, sampler, CUDA graphs, allocator slack
	KV       int64
	KVBlocks int // of BlockSize tokens
}

// stepPeak is the knob-dependent part of the overhead.
func stepPeak(maxNumSeqs, maxNumBatchedTokens int) int64 {
	return int64(maxNumBatchedTokens)*qwenActivation + int64(min(maxNumSeqs, maxNumBatchedTokens))*samplerBytes
}

// Plan computes the memory plan of an engine started with these knobs (0:
// the profile's default), and refuses, as vLLM does at start, a plan with
// no room for the KV cache, one whose KV cache cannot hold one sequence of
// max_model_len (vllm/v1/core/kv_cache_utils.py,
// _check_enough_kv_cache_memory), and fewer batched tokens than sequences
// (vllm/config/scheduler.py). The profile's Overhead is the one at its
// default knobs; other knobs move it by the difference of their step peak.
func (p Profile) Plan(util float64, maxNumSeqs, maxNumBatchedTokens, maxModelLen int) (MemoryPlan, error) {
	maxNumSeqs = cmpOr(maxNumSeqs, p.MaxNumSeqs)
	maxNumBatchedTokens = cmpOr(maxNumBatchedTokens, p.MaxNumBatchedTokens)
	maxModelLen = cmpOr(maxModelLen, p.MaxModelLen)
	if maxNumBatchedTokens < maxNumSeqs {
		return MemoryPlan{}, fmt.Errorf("max_num_batched_tokens (%d) must be at least max_num_seqs (%d)", maxNumBatchedTokens, maxNumSeqs)
	}
	if util <= 0 || util > 1 {
		return MemoryPlan{}, fmt.Errorf("--gpu-memory-utilization %g: want a fraction in (0, 1]", util)
	}
	m := MemoryPlan{Share: int64(float64(p.GPUMemory) * util), Weights: p.Weights,
		Overhead: max(p.Overhead+stepPeak(maxNumSeqs, maxNumBatchedTokens)-stepPeak(p.MaxNumSeqs, p.MaxNumBatchedTokens), 0)}
	m.KV = m.Share - m.Weights - m.Overhead
	if m.KV < BlockSize*p.KVBytesPerToken {
		return m, fmt.Errorf("no memory left for the KV cache: --gpu-memory-utilization %.2f of %.1f GiB is %.2f GiB, and the weights take %.2f GiB and the runtime %.2f GiB (max_num_seqs %d, max_num_batched_tokens %d)",
			util, float64(p.GPUMemory)/gib, float64(m.Share)/gib, float64(m.Weights)/gib, float64(m.Overhead)/gib, maxNumSeqs, maxNumBatchedTokens)
	}
	m.KVBlocks = int(m.KV / (BlockSize * p.KVBytesPerToken))
	if need := int64(maxModelLen) * p.KVBytesPerToken; int64(m.KVBlocks)*BlockSize < int64(maxModelLen) {
		return m, fmt.Errorf("one request of max_model_len %d needs %.2f GiB of KV cache, more than the %.2f GiB left (--gpu-memory-utilization %.2f of %.1f GiB): raise the share or lower max_model_len",
			maxModelLen, float64(need)/gib, float64(m.KV)/gib, util, float64(p.GPUMemory)/gib)
	}
	return m, nil
}

func cmpOr(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}
