#!/usr/bin/env python3
"""Measure Qwen2.5-0.5B-Instruct's GPU time per engine step with the
kernel structure vLLM runs (issue 25).

The model's architecture with random bf16 weights, from its published
config (transformers' Qwen2ForCausalLM: hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4864, vocabulary 151,936, tied embeddings). The
forward pass is written here the way vLLM's Qwen2
(vllm/model_executor/models/qwen2.py) runs it, layer by layer:

  RMSNorm fused with the residual add (vLLM's fused_add_rms_norm)
  one QKV GEMM with its bias (QKVParallelLinear: q, k and v weights stacked)
  one rotary kernel for q and k together (vLLM's rotary_embedding)
  one cache write of the new K and V (reshape_and_cache_flash)
  one attention kernel over the cached tokens (SDPA: FlashAttention)
  o_proj
  RMSNorm fused with the residual add
  one gate_up GEMM (MergedColumnParallelLinear)
  one SiLU-and-multiply kernel (SiluAndMul)
  down_proj

The fused pieces are compiled with torch.compile (Inductor writes one
Triton kernel for each), as vLLM compiles its model; every step is
captured in a CUDA graph and replayed, as vLLM replays its decode steps.
torch.profiler counts the kernels per layer (one layer's step against
two layers') for this structure and for the unfused one that
measure_unfused.py timed.

Before anything is timed, the fused forward is checked against
transformers' own: a 16-token prompt's last logits through the prefill
path, and the same prompt as 15 tokens of prefill into the cache plus a
decode step.

With --split-kv, a decode step of few sequences splits each sequence's
cached tokens among several blocks and merges their partial results by
their log-sum-exp, as vLLM's FlashAttention does for decode (split-KV,
num_splits). Without it (the run in h100-gpu.json) one block per KV head
walks the whole context, and a single sequence at 2048 tokens took a
third longer than at 128: the four steps the fit misses by 15-18%.

What still differs from vLLM: the KV cache is contiguous per sequence,
not paged (FlashAttention reads it with the same bytes per token); the
split-KV merge is PyTorch's FlashAttention plus a compiled merge, not
vLLM's own kernels; sampling is an argmax; none of vLLM's host side
(scheduler, detokenizer, API server) is measured.

Usage: python3 measure.py OUT.json [--quick] [--split-kv]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

QUICK = "--quick" in sys.argv
SPLIT_KV = "--split-kv" in sys.argv
OUT = sys.argv[1]
dev = "cuda"
torch.manual_seed(0)
torch._dynamo.config.cache_size_limit = 64

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402
import transformers  # noqa: E402

THETA = 1000000.0
shape = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
             rms_norm_eps=1e-6, max_position_embeddings=32768)
if int(transformers.__version__.split(".")[0]) >= 5:
    cfg = Qwen2Config(**shape, rope_parameters={"rope_type": "default", "rope_theta": THETA})
else:
    cfg = Qwen2Config(**shape, rope_theta=THETA)
model = Qwen2ForCausalLM(cfg).to(dtype=torch.bfloat16, device=dev).eval()
H, NL, NH, KVH, HD, I = 896, 24, 14, 2, 64, 4864
G = NH // KVH
QS, KS = NH * HD, KVH * HD
params = sum(p.numel() for p in model.parameters())
eps = cfg.rms_norm_eps
emb = model.model.embed_tokens.weight
norm_w = model.model.norm.weight


class Layer:
    """One decoder layer's weights as vLLM loads them: stacked QKV and
    gate_up (vLLM's load_weights maps q/k/v_proj into qkv_proj and
    gate/up_proj into gate_up_proj)."""

    def __init__(self, hf):
        a, m = hf.self_attn, hf.mlp
        self.qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous()
        self.qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).contiguous()
        self.o_w = a.o_proj.weight
        self.gate_up_w = torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous()
        self.down_w = m.down_proj.weight
        self.in_norm = hf.input_layernorm.weight
        self.post_norm = hf.post_attention_layernorm.weight


layers = [Layer(l) for l in model.model.layers]

# vLLM's rotary embedding keeps a cos/sin cache indexed by position.
inv_freq = 1.0 / (THETA ** (torch.arange(0, HD, 2, device=dev, dtype=torch.float32) / HD))
ang = torch.arange(32768, device=dev, dtype=torch.float32)[:, None] * inv_freq
cos_sin = torch.cat([ang.cos(), ang.sin()], -1)  # [pos, HD]


@torch.compile(dynamic=True, fullgraph=True)
def rms_norm(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


@torch.compile(dynamic=True, fullgraph=True)
def fused_add_rms_norm(x, residual, w):
    r = x + residual
    rf = r.float()
    return (rf * torch.rsqrt(rf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w, r


@torch.compile(dynamic=True, fullgraph=True)
def rotary_qk(qkv, pos):
    """q and k of the QKV output rotated in one kernel (neox style, as
    Qwen2); v passed beside k so that one copy writes the cache. Returns
    q [N, NH, HD] and the new cache entries [N, 2, KVH, HD]."""
    n = qkv.shape[0]
    cs = cos_sin[pos]  # [N, HD]
    cos = torch.cat([cs[:, : HD // 2], cs[:, : HD // 2]], -1)[:, None, :]
    sin = torch.cat([cs[:, HD // 2:], cs[:, HD // 2:]], -1)[:, None, :]
    qk = qkv[:, : QS + KS].view(n, NH + KVH, HD).float()
    x1, x2 = qk[..., : HD // 2], qk[..., HD // 2:]
    rot = (qk * cos + torch.cat([-x2, x1], -1) * sin).to(qkv.dtype)
    q = rot[:, :NH]
    kv = torch.stack([rot[:, NH:], qkv[:, QS + KS:].view(n, KVH, HD)], 1)
    return q, kv


@torch.compile(dynamic=True, fullgraph=True)
def merge_splits(out, lse):
    """Split-KV's merge: out [B, KVH, S, G, HD] and lse [B, KVH, S, G] of
    S blocks of the context into [B, KVH, G, HD]."""
    w = torch.softmax(lse, dim=2)
    return (w[..., None] * out.float()).sum(2).to(out.dtype)


def splits(B, L):
    """How many blocks a decode step's context is split among: enough
    for about one block per SM (132 on an H100 or H200), each at least 128
    tokens (vLLM's FlashAttention chooses num_splits by a like rule)."""
    s = 1
    while s * 2 * B * KVH <= 132 and L % (s * 2 * 128) == 0:
        s *= 2
    return s


def decode_attention(q, K, V, B, L):
    """q [B, KVH, G, HD] over K, V [B, KVH, L, HD] (views of the cache)."""
    S = splits(B, L) if SPLIT_KV else 1
    if S == 1 or K.stride(1) != L * HD:
        return F.scaled_dot_product_attention(q, K, V)
    # The cache holds exactly L tokens a sequence, so its S blocks are
    # S more heads of L/S tokens, without a copy.
    Ks = K.reshape(B, KVH * S, L // S, HD)
    Vs = V.reshape(B, KVH * S, L // S, HD)
    qs = q[:, :, None].expand(B, KVH, S, G, HD).reshape(B, KVH * S, G, HD)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qs, Ks, Vs, scale=HD ** -0.5)[:2]
    return merge_splits(out.view(B, KVH, S, G, HD), lse.view(B, KVH, S, G))


@torch.compile(dynamic=True, fullgraph=True)
def silu_and_mul(x):
    return F.silu(x[..., :I]) * x[..., I:]


def mlp(layer, x):
    return F.linear(silu_and_mul(F.linear(x, layer.gate_up_w)), layer.down_w)


def forward(ids, pos, attend, nlayers=NL):
    """The model over tokens ids at positions pos; attend(li, q, kv)
    writes the layer's new cache entries and returns the attention's
    output [N, NH*HD]. Returns the final hidden states."""
    h = emb[ids]
    residual = None
    for li, layer in enumerate(layers[:nlayers]):
        if residual is None:
            residual = h
            x = rms_norm(h, layer.in_norm)
        else:
            x, residual = fused_add_rms_norm(h, residual, layer.in_norm)
        q, kv = rotary_qk(F.linear(x, layer.qkv_w, layer.qkv_b), pos)
        h = F.linear(attend(li, q, kv), layer.o_w)
        x, residual = fused_add_rms_norm(h, residual, layer.post_norm)
        h = mlp(layer, x)
    x, _ = fused_add_rms_norm(h, residual, norm_w)
    return x


def new_cache(B, L):
    # [B, 2 (K, V), KVH, L, HD] per layer: one sequence's K and V contiguous.
    return [torch.randn(B, 2, KVH, L, HD, device=dev, dtype=torch.bfloat16) for _ in range(NL)]


def make_prefill(ids, cache=None, b=0):
    """A prefill chunk of T tokens of one sequence: causal attention within
    the chunk, its K and V written to the cache (sequence b) when one is
    given, logits for the last token only (as vLLM)."""
    T = ids.shape[0]
    pos = torch.arange(T, device=dev)

    def attend(li, q, kv):
        if cache is not None:
            cache[li][b, :, :, :T] = kv.permute(1, 2, 0, 3)
        k, v = kv[:, 0].transpose(0, 1), kv[:, 1].transpose(0, 1)  # [KVH, T, HD]
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k[None], v[None],
                                           is_causal=True, enable_gqa=True)[0]
        return o.transpose(0, 1).reshape(T, QS)

    out = torch.zeros(1, dtype=torch.long, device=dev)

    def step(nlayers=NL):
        x = forward(ids, pos, attend, nlayers)
        logits = x[-1:] @ emb.T
        out.copy_(logits.argmax(-1))
        return logits

    return step


def make_decode(B, L, cache):
    """A decode step for B sequences at context L (the new token is the
    L-th): writes its K and V at L-1 and attends over the L cached tokens,
    each KV head read once for its 7 query heads."""
    ids = torch.zeros(B, dtype=torch.long, device=dev)
    pos = torch.full((B,), L - 1, dtype=torch.long, device=dev)
    out = torch.zeros(B, dtype=torch.long, device=dev)

    def attend(li, q, kv):
        c = cache[li]
        c[:B, :, :, L - 1] = kv
        o = decode_attention(q.view(B, KVH, G, HD), c[:B, 0, :, :L], c[:B, 1, :, :L], B, L)
        return o.reshape(B, QS)

    def step(nlayers=NL):
        x = forward(ids, pos, attend, nlayers)
        logits = x @ emb.T
        out.copy_(logits.argmax(-1))
        return logits

    return step, ids


def unfused_layer_step(B, L, cache):
    """One decode layer as measure_unfused.py wrote it (PyTorch's unfused
    kernels), for the kernel count only."""
    hf = model.model.layers[0]
    a, m = hf.self_attn, hf.mlp
    h = torch.zeros(B, H, device=dev, dtype=torch.bfloat16)
    p = torch.tensor(L - 1, device=dev)

    def rms(x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w

    def rope(x):
        an = p.float()[..., None] * inv_freq
        cos = torch.cat([an.cos(), an.cos()], -1).to(x.dtype)
        sin = torch.cat([an.sin(), an.sin()], -1).to(x.dtype)
        return x * cos + torch.cat([-x[..., HD // 2:], x[..., : HD // 2]], -1) * sin

    def step():
        x = rms(h, hf.input_layernorm.weight)
        q = rope(a.q_proj(x).view(B, KVH, G, HD))
        k = rope(a.k_proj(x).view(B, KVH, HD))
        v = a.v_proj(x).view(B, KVH, HD)
        cache[0][:B, 0, :, L - 1] = k
        cache[0][:B, 1, :, L - 1] = v
        K, V = cache[0][:B, 0, :, :L], cache[0][:B, 1, :, :L]
        s = torch.matmul(q, K.transpose(-1, -2)) * (HD ** -0.5)
        o = torch.matmul(torch.softmax(s.float(), -1).to(q.dtype), V)
        y = h + a.o_proj(o.reshape(B, H))
        return y + m.down_proj(F.silu(m.gate_proj(rms(y, hf.post_attention_layernorm.weight))) *
                               m.up_proj(rms(y, hf.post_attention_layernorm.weight)))

    return step


def kernels(fn):
    """The CUDA kernels one call of fn launches, by name."""
    fn()
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower() \
                and "memset" not in e.name.lower():
            names[e.name] = names.get(e.name, 0) + 1
    return names


def short(name):
    n = name.split("(")[0].split("<")[0]
    return n[:60]


def timed(fn, reps):
    """Capture fn in a CUDA graph and return the mean replay time (ms)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / reps
    del g
    return ms


result = {
    "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "transformers": transformers.__version__,
    "parameters": params,
    "dtype": "bfloat16",
    "structure": "vLLM's Qwen2: stacked QKV and gate_up GEMMs, fused add+RMSNorm, one rotary kernel, "
                 "one cache write, SDPA attention, SiLU-and-mul fused (torch.compile)",
    "method": "CUDA graph per shape, mean of replays timed with CUDA events",
    "split_kv": SPLIT_KV,
}

with torch.inference_mode():
    t0 = time.time()
    ids = torch.randint(0, cfg.vocab_size, (16,), device=dev)
    ref = model(ids[None]).logits[0, -1].float()
    mine = make_prefill(ids)()[0].float()
    cache = new_cache(1, 64)
    make_prefill(ids[:15], cache)()
    dstep, dids = make_decode(1, 16, cache)
    dids.copy_(ids[15:16])
    mine_d = dstep()[0].float()
    result["check_vs_transformers"] = {
        "max_abs_diff": (ref - mine).abs().max().item(),
        "decode_max_abs_diff": (ref - mine_d).abs().max().item(),
        "ref_abs_max": ref.abs().max().item(),
        "same_argmax": bool(ref.argmax().item() == mine.argmax().item() == mine_d.argmax().item()),
    }
    print("check", result["check_vs_transformers"], flush=True)
    del cache
    # The split-KV path against one block, on a context it splits.
    qq = torch.randn(1, KVH, G, HD, device=dev, dtype=torch.bfloat16)
    kk = torch.randn(1, KVH, 2048, HD, device=dev, dtype=torch.bfloat16)
    vv = torch.randn(1, KVH, 2048, HD, device=dev, dtype=torch.bfloat16)
    whole = F.scaled_dot_product_attention(qq, kk, vv).float()
    split = decode_attention(qq, kk, vv, 1, 2048).float()
    result["check_split_kv"] = {"splits": splits(1, 2048) if SPLIT_KV else 1, "max_abs_diff": (whole - split).abs().max().item(),
                                "abs_max": whole.abs().max().item()}
    print("split-KV check", result["check_split_kv"], flush=True)
    result["compile_seconds"] = time.time() - t0

    # Kernels per layer: a step of two layers against one.
    cache = new_cache(8, 512)
    step, _ = make_decode(8, 512, cache)
    one, two = kernels(lambda: step(1)), kernels(lambda: step(2))
    per_layer = {short(n): two.get(n, 0) - one.get(n, 0) for n in two if two.get(n, 0) != one.get(n, 0)}
    whole = kernels(step)
    unfused = kernels(unfused_layer_step(8, 512, cache))
    result["kernels"] = {
        "decode_per_layer": sum(per_layer.values()),
        "decode_per_layer_by_name": per_layer,
        "decode_step_total": sum(whole.values()),
        "unfused_per_layer": sum(unfused.values()),
        "unfused_per_layer_by_name": {short(n): c for n, c in unfused.items()},
    }
    print("kernels", json.dumps(result["kernels"], indent=1), flush=True)
    pre_one = kernels(lambda: make_prefill(ids, new_cache(1, 16))(1))
    pre_two = kernels(lambda: make_prefill(ids, new_cache(1, 16))(2))
    result["kernels"]["prefill_per_layer"] = sum(pre_two.values()) - sum(pre_one.values())
    del cache

    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    contexts = [128, 512, 1024, 2048]
    chunks = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    reps = 50
    if QUICK:
        batches, contexts, chunks, reps = [1, 64], [128, 1024], [64, 1024], 10
    t1 = time.time()
    decode = []
    for L in contexts:
        cache = new_cache(max(batches), L)  # exactly L a sequence: split-KV's blocks are views
        for B in batches:
            step, _ = make_decode(B, L, cache)
            ms = timed(step, reps)
            decode.append({"batch": B, "context": L, "ms": ms})
            print(f"decode B={B} L={L}: {ms:.3f} ms", flush=True)
        del cache
    result["decode"] = decode
    torch.cuda.empty_cache()
    pre = []
    for T in chunks:
        tids = torch.randint(0, cfg.vocab_size, (T,), device=dev)
        c = new_cache(1, T)
        ms = timed(make_prefill(tids, c), reps)
        del c
        pre.append({"tokens": T, "ms": ms})
        print(f"prefill T={T}: {ms:.3f} ms", flush=True)
    result["prefill"] = pre
    result["seconds"] = time.time() - t1

json.dump(result, open(OUT, "w"), indent=1)
print("wrote", OUT)
