"""A stand-in engine for llmlab's real-GPU check (docs/gpu.md): no vLLM can
be installed on the lent GPU machine, so this serves just enough of vLLM's
API (GET /health, POST /v1/completions, GET /metrics) with Python's own
http.server, and holds GPU memory as vLLM does: its share
LLMLAB_GPU_MEMORY_UTILIZATION of the card, taken at start.

  torch_engine.py PORT
"""
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
port = int(sys.argv[1])
share = float(os.environ.get("LLMLAB_GPU_MEMORY_UTILIZATION", "0.9"))
free, total = torch.cuda.mem_get_info()
nbytes = max(int(share * total) - (768 << 20), 64 << 20)
kv = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
kv.fill_(0)
w = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
print(f"torch_engine: pid {os.getpid()} holds {nbytes / 2**30:.2f} GiB (share {share} of {total / 2**30:.1f} GiB)", flush=True)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, "")
        elif self.path == "/metrics":
            self.reply(200, f'vllm:cache_config_info{{gpu_memory_utilization="{share}"}} 1\n', "text/plain")
        else:
            self.reply(404, "{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = int(body.get("max_tokens", 16))
        for _ in range(n):  # one "decode step" per token
            x = w @ w
        torch.cuda.synchronize()
        self.reply(200, json.dumps({
            "id": "cmpl-torch", "object": "text_completion", "created": int(time.time()), "model": body.get("model", ""),
            "choices": [{"index": 0, "text": " x" * n, "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}))


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
