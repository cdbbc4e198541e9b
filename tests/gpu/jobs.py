"""Job programs run as subprocesses by the GPU tests (they import torch)."""

ALLOCATE = """
import os, sys, time, torch
gib = float(sys.argv[1])
try:
    x = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    x.fill_(1)
    torch.cuda.synchronize()
except torch.OutOfMemoryError as e:
    print("OOM", e, flush=True)
    sys.exit(3)
except RuntimeError as e:  # MPS reports some allocation failures as generic CUDA errors
    print("ALLOC-FAILED", e, flush=True)
    sys.exit(4)
print("ALLOCATED", gib, flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 60)
"""

MATMUL_LOOP = """
import os, sys, time, torch
out = sys.argv[1]
a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
n = 0
last = time.monotonic()
while True:
    for _ in range(4):
        c = a @ b
    torch.cuda.synchronize()
    n += 1
    now = time.monotonic()
    if now - last > 0.05:
        with open(out + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(out + ".tmp", out)
        last = now
"""
