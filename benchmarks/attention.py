"""The teaching attention (einsum, softmax, einsum) against F.scaled_dot_product_attention.

    python benchmarks/attention.py [--causal]

Times one forward pass of each at a few sequence lengths (batch 8, 8 heads, head size 64) and prints
a table; the last line summarises the speed-ups.
"""

from __future__ import annotations

import argparse
import timeit

import torch
import torch.nn.functional as F

import helpers
from helpers.attention import causal_mask, einsum_attention


def seconds_per_call(fn, repeat: int = 5) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return sorted(timer.repeat(repeat, number))[repeat // 2] / number


@torch.no_grad()
def time_both(T: int, causal: bool, batch: int = 8, heads: int = 8, head_dim: int = 64) -> tuple[float, float]:
    """Seconds per call of the einsum reference and of F.scaled_dot_product_attention."""
    q, k, v = (torch.randn(batch, heads, T, head_dim) for _ in range(3))
    mask = causal_mask(T) if causal else None
    t_einsum = seconds_per_call(lambda: einsum_attention(q, k, v, mask))
    t_sdpa = seconds_per_call(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    return t_einsum, t_sdpa


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    print(helpers.summary())
    speedups = []
    for T in args.lengths:
        t_einsum, t_sdpa = time_both(T, args.causal)
        speedups.append((T, t_einsum / t_sdpa))
        print(f"T={T:5d}  einsum {t_einsum * 1e3:8.2f} ms   sdpa {t_sdpa * 1e3:8.2f} ms   speed-up {t_einsum / t_sdpa:5.2f}x")
    print(f"attention sdpa speed-up over einsum (causal={args.causal}): "
          + ", ".join(f"T={T}: {s:.2f}x" for T, s in speedups))


if __name__ == "__main__":
    main()
