#!/usr/bin/env python3
"""Measure Qwen2.5-0.5B-Instruct's GPU time per engine step (issue 17).

Builds the model's architecture with random weights from its published
config (transformers' Qwen2ForCausalLM: hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4864, vocabulary 151,936, tied embeddings, bf16),
then times, each shape captured once in a CUDA graph and replayed:

- a decode step: B sequences, each at context L, one new token each. The
  attention reads exactly L cached tokens per sequence (the cache is
  sliced to L, not padded to its maximum as transformers' static cache
  is) and each KV head once for its 7 query heads (GQA, as vLLM's
  kernels do), so the per-KV-token cost is the real one;
- a prefill step: T prompt tokens of one sequence, causal attention
  within the chunk, logits for the last token only (as vLLM).

The forward pass is written here over the transformers model's own
weight tensors (so the shapes are transformers' Qwen2), and is checked
against transformers' forward on a prompt before anything is timed.
What differs from vLLM: no paged KV cache or FlashAttention/FlashInfer
kernels (PyTorch matmuls and SDPA instead), no fused kernels (vLLM fuses
RMSNorm+residual, SiLU*mul, RoPE), sampling is an argmax, and none of
vLLM's host side (scheduler, detokenizer, API server) is measured.

Usage: python3 measure_unfused.py OUT.json [--quick]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F

QUICK = "--quick" in sys.argv
OUT = sys.argv[1]
dev = "cuda"
torch.manual_seed(0)

from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402
import transformers  # noqa: E402

THETA = 1000000.0
shape = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
             rms_norm_eps=1e-6, max_position_embeddings=32768)
if int(transformers.__version__.split(".")[0]) >= 5:
    # transformers 5 keeps RoPE's settings in rope_parameters.
    cfg = Qwen2Config(**shape, rope_parameters={"rope_type": "default", "rope_theta": THETA})
else:
    cfg = Qwen2Config(**shape, rope_theta=THETA)
model = Qwen2ForCausalLM(cfg).to(dtype=torch.bfloat16, device=dev).eval()
H, NL, NH, KVH, HD = 896, 24, 14, 2, 64
G = NH // KVH
params = sum(p.numel() for p in model.parameters())
emb = model.model.embed_tokens.weight
layers = model.model.layers
norm_w = model.model.norm.weight
eps = cfg.rms_norm_eps
inv_freq = 1.0 / (THETA ** (torch.arange(0, HD, 2, device=dev, dtype=torch.float32) / HD))


def rms(x, w):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, pos):
    # x [..., n, HD], pos [n] or scalar tensor broadcastable: rotate_half as transformers
    ang = pos.float()[..., None] * inv_freq  # [n, HD/2]
    cos = torch.cat([ang.cos(), ang.cos()], -1).to(x.dtype)
    sin = torch.cat([ang.sin(), ang.sin()], -1).to(x.dtype)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def mlp(layer, h):
    m = layer.mlp
    return m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))


def prefill(ids):
    """ids [T] -> logits of the last token [vocab]; no cache kept."""
    T = ids.shape[0]
    pos = torch.arange(T, device=dev)
    h = emb[ids]
    for layer in layers:
        a = layer.self_attn
        x = rms(h, layer.input_layernorm.weight)
        q = a.q_proj(x).view(T, NH, HD).transpose(0, 1)
        k = a.k_proj(x).view(T, KVH, HD).transpose(0, 1)
        v = a.v_proj(x).view(T, KVH, HD).transpose(0, 1)
        q, k = rope(q, pos), rope(k, pos)
        k = k.repeat_interleave(G, 0)
        v = v.repeat_interleave(G, 0)
        o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
        h = h + a.o_proj(o.transpose(0, 1).reshape(T, H))
        h = h + mlp(layer, rms(h, layer.post_attention_layernorm.weight))
    return rms(h[-1:], norm_w) @ emb.T


def make_decode(B, L, Kc, Vc):
    """A decode step for B sequences at context L (the new token is the
    L-th): writes its K/V at L-1 and attends over L cached tokens."""
    ids = torch.zeros(B, dtype=torch.long, device=dev)
    pos = torch.tensor(L - 1, device=dev)
    out = torch.zeros(B, dtype=torch.long, device=dev)

    def step():
        h = emb[ids]
        for li, layer in enumerate(layers):
            a = layer.self_attn
            x = rms(h, layer.input_layernorm.weight)
            q = rope(a.q_proj(x).view(B, KVH, G, HD), pos)
            k = rope(a.k_proj(x).view(B, KVH, HD), pos)
            v = a.v_proj(x).view(B, KVH, HD)
            Kc[li][:B, :, L - 1] = k
            Vc[li][:B, :, L - 1] = v
            K = Kc[li][:B, :, :L]  # [B, KVH, L, HD]
            V = Vc[li][:B, :, :L]
            s = torch.matmul(q, K.transpose(-1, -2)) * (HD ** -0.5)  # [B, KVH, G, L]
            o = torch.matmul(torch.softmax(s.float(), -1).to(q.dtype), V)  # [B, KVH, G, HD]
            h = h + a.o_proj(o.reshape(B, H))
            h = h + mlp(layer, rms(h, layer.post_attention_layernorm.weight))
        logits = rms(h, norm_w) @ emb.T
        out.copy_(logits.argmax(-1))

    return step


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
    "method": "CUDA graph per shape, mean of replays timed with CUDA events",
}

with torch.inference_mode():
    # The forward here against transformers' own, on a 16-token prompt.
    ids = torch.randint(0, cfg.vocab_size, (16,), device=dev)
    ref = model(ids[None]).logits[0, -1].float()
    mine = prefill(ids)[0].float()
    result["check_vs_transformers"] = {
        "max_abs_diff": (ref - mine).abs().max().item(),
        "ref_abs_max": ref.abs().max().item(),
        "same_argmax": bool(ref.argmax().item() == mine.argmax().item()),
    }
    print("check", result["check_vs_transformers"], flush=True)

    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    contexts = [128, 512, 1024, 2048]
    chunks = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
    reps = 50
    if QUICK:
        batches, contexts, chunks, reps = [1, 64], [128, 1024], [64, 1024], 10
    Bmax, Lmax = max(batches), max(contexts)
    Kc = [torch.randn(Bmax, KVH, Lmax, HD, device=dev, dtype=torch.bfloat16) for _ in range(NL)]
    Vc = [torch.randn(Bmax, KVH, Lmax, HD, device=dev, dtype=torch.bfloat16) for _ in range(NL)]
    decode = []
    t0 = time.time()
    for L in contexts:
        for B in batches:
            ms = timed(make_decode(B, L, Kc, Vc), reps)
            decode.append({"batch": B, "context": L, "ms": ms})
            print(f"decode B={B} L={L}: {ms:.3f} ms", flush=True)
    result["decode"] = decode
    del Kc, Vc
    torch.cuda.empty_cache()
    pre = []
    for T in chunks:
        ids = torch.randint(0, cfg.vocab_size, (T,), device=dev)
        ms = timed(lambda: prefill(ids), reps)
        pre.append({"tokens": T, "ms": ms})
        print(f"prefill T={T}: {ms:.3f} ms", flush=True)
    result["prefill"] = pre
    result["seconds"] = time.time() - t0

json.dump(result, open(OUT, "w"), indent=1)
print("wrote", OUT)
