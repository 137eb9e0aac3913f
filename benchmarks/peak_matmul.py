"""Peak matrix-multiply throughput of this machine, the yardstick for model FLOP utilisation.

    python benchmarks/peak_matmul.py [--size 2048] [--seconds 5] [--dtype float32]

Multiplies two square matrices repeatedly and prints the best GFLOP/s over several timed runs
(2 * n^3 floating-point operations per product). The last line is the result.
"""

from __future__ import annotations

import argparse
import time

import torch

import helpers


def peak_gflops(size: int = 2048, seconds: float = 5.0, dtype=torch.float32, device=None) -> float:
    device = device or helpers.get_device()
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm up the kernels and caches
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        sync()
        best = max(best, 5 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    print(helpers.summary())
    gflops = peak_gflops(args.size, args.seconds, dtype)
    print(f"peak_matmul size={args.size} dtype={args.dtype} threads={torch.get_num_threads()}: {gflops:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
