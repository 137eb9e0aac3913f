"""Generation speed with and without the key-value cache.

    python benchmarks/generation.py [--layers 4 --heads 4 --width 256 --vocab 65]

Generates 64, 256 and 512 new tokens greedily from a 16-token prompt (batch 1), once re-reading the
whole prefix at every step and once with the KV cache, checks that both give identical tokens, and
prints tokens per second. Weights are random: speed does not depend on them. The last line is the result.
"""

from __future__ import annotations

import argparse
import time

import torch

import helpers


def tokens_per_second(model, prompt, new_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = helpers.generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
    return new_tokens / (time.perf_counter() - start), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 512])
    args = parser.parse_args()
    print(helpers.summary())
    helpers.seed_everything(0)
    prompt_len = 16
    config = helpers.TransformerConfig(vocab_size=args.vocab, block_size=prompt_len + max(args.lengths),
                                       n_layer=args.layers, n_head=args.heads, n_embd=args.width)
    model = helpers.GPT(config).eval()
    prompt = torch.randint(0, args.vocab, (1, prompt_len))
    tokens_per_second(model, prompt, 8, True)  # warm up
    results = []
    for n in args.lengths:
        slow, a = tokens_per_second(model, prompt, n, use_cache=False)
        fast, b = tokens_per_second(model, prompt, n, use_cache=True)
        assert torch.equal(a, b), "the cache changed the generated tokens"
        results.append((n, slow, fast))
        print(f"{n:4d} new tokens: no cache {slow:8.1f} tok/s   KV cache {fast:8.1f} tok/s   speed-up {fast / slow:5.2f}x   (identical tokens)")
    print("generation KV-cache speed-up: " + ", ".join(f"{n} tokens {f / s:.1f}x ({f:.0f} vs {s:.0f} tok/s)" for n, s, f in results))


if __name__ == "__main__":
    main()
