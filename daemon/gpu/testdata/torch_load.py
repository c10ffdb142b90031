"""A GPU load for llmlab's real-GPU check (docs/gpu.md), with PyTorch.

  torch_load.py compute SECONDS   take the share llmlabd gives
                                  (LLMLAB_GPU_MEMORY_UTILIZATION of the card,
                                  as vLLM would) and multiply matrices
  torch_load.py hold FRACTION     take that fraction of the card and sleep
"""
import os
import signal
import sys
import time

import torch

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
mode, arg = sys.argv[1], float(sys.argv[2])
free, total = torch.cuda.mem_get_info()
if mode == "hold":
    share = arg
else:
    share = float(os.environ.get("LLMLAB_GPU_MEMORY_UTILIZATION", "0.9"))
# The CUDA context takes some hundreds of MiB beyond the tensors.
nbytes = max(int(share * total) - (768 << 20), 64 << 20)
block = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
block.fill_(1)
print(f"torch_load: pid {os.getpid()} holds {nbytes / 2**30:.2f} GiB of {total / 2**30:.1f} GiB (share {share})", flush=True)
if mode == "hold":
    while True:
        time.sleep(1)
a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
end = time.time() + arg
while time.time() < end:
    b = a @ a
    torch.cuda.synchronize()
print("torch_load: done", flush=True)
