"""A stand-in inference server for the examples: answers "requests" for a while, then exits cleanly."""

import argparse
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=5)
args = parser.parse_args()
print(f"serving on MIG device {os.environ.get('CUDA_VISIBLE_DEVICES', '')}", flush=True)
deadline = time.monotonic() + args.seconds
served = 0
while time.monotonic() < deadline:
    served += 1
    time.sleep(0.25)
print(f"served {served} requests", flush=True)
