"""A stand-in training program for the examples: prints what a real trainer would check, then "trains".

It reads the environment gpufleet gives every job (GPUs, rank, rendezvous) and runs a short loop, so the
examples run anywhere, with or without a GPU.
"""

import argparse
import math
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--step-seconds", type=float, default=0.5)
parser.add_argument("--lr", type=float, default=3e-4)
args = parser.parse_args()

rank = int(os.environ.get("RANK", "0"))
world = int(os.environ.get("WORLD_SIZE", "1"))
print(
    f"job={os.environ.get('GPUFLEET_JOB_ID', '?')} rank={rank}/{world} "
    f"master={os.environ.get('MASTER_ADDR', '-')}:{os.environ.get('MASTER_PORT', '-')} "
    f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')} lr={args.lr}",
    flush=True,
)
for step in range(1, args.steps + 1):
    loss = 2.5 * math.exp(-step * args.lr * 300) + 0.1
    print(f"step {step}/{args.steps} loss {loss:.4f}", flush=True)
    time.sleep(args.step_seconds)
print("done", flush=True)
sys.exit(0)
