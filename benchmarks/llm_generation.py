"""SmolLM2-135M-Instruct (or Gemma 3 270M) generation: our GPT (helpers.generate.stream: key-value cache, DecodeStep)
against transformers' ``generate`` on the same weights, side by side in one run.

    python benchmarks/llm_generation.py [--model smollm2|gemma3] [--prompt-tokens 512] [--new-tokens 128]
                                        [--repeats 3] [--dtypes float32 bfloat16] [--threads N]

Greedy decoding of ``--new-tokens`` tokens after a prompt of ``--prompt-tokens`` tokens of Tiny Shakespeare (its
validation split; for SmolLM2 as a user message in ChatML, for Gemma 3 270M, a base model, as plain text after
``<bos>``). Gemma 3 runs through our model's forward (``DecodeStep`` covers the Llama options only), against
``Gemma3ForCausalLM`` holding the same dequantized weights (:func:`helpers.llm.hf_gemma3`); the weights are
Google's base ``gemma-3-270m``, under the Gemma terms of use (https://ai.google.dev/gemma/terms). For each dtype both implementations run alternately, ``--repeats``
times each, and the best run of each counts (the machine may be shared: the load average is printed before and
after). Reported: the prefill (the prompt in one pass, up to the first new token) in seconds and its model FLOP
utilisation against benchmarks/peak_matmul.py's peak for that dtype, the decoding rate in new tokens per second
(tokens 2..N over the time after the first), whether both produce identical tokens, and the peak memory of
loading our model. The last line is the result.

Why our decoding is fast (moved here from notebook 09, which keeps only the measured lesson: a decode step reads
every weight once, so its tokens per second are bound by memory bandwidth). Beyond reading the weights, a step of a
small model on a CPU pays the fixed cost of each operation PyTorch launches, a few microseconds each: the model's
general ``forward`` (masks, shape checks, module calls) launches about 60 per block, 30 blocks per token.
``stream`` therefore runs each new token through ``helpers.generate.DecodeStep``: the weights gathered once, about
20 operations per block, the same arithmetic in the same order, so its logits equal the forward's to the last bit
(``tests/test_llm.py`` checks it, with two caches filled by the same prompt). In bfloat16 the weights are half the
bytes, but PyTorch's own bfloat16 product of one row by a matrix is slower than the memory allows on common CPUs;
``DecodeStep`` reorders each bfloat16 matrix once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``), which a one-row product reads faster, with the results of
``F.linear``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_matmul import peak_gflops  # noqa: E402

import helpers  # noqa: E402
from helpers.gemma import gemma3_weights, load_gemma3  # noqa: E402
from helpers.generate import stream  # noqa: E402
from helpers.llm import hf_gemma3, hf_llama  # noqa: E402
from helpers.pretrained import chatml, load_smollm2, smollm2_weights  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def prompt_ids(tokenizer, n_tokens: int) -> list[int]:
    """A ChatML prompt of exactly ``n_tokens`` tokens: a user message asking to continue a scene of Tiny
    Shakespeare's validation text, cut to fit, then the assistant's turn."""
    text = helpers.load_tiny_shakespeare()
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    head = tokenizer.encode(chatml([{"role": "user", "content": "Continue this scene:\n"}]).removesuffix(suffix))
    tail = tokenizer.encode(suffix)
    body = tokenizer.encode(text[int(0.9 * len(text)) :][: 8 * n_tokens])[: n_tokens - len(head) - len(tail)]
    return head + body + tail


def gemma_prompt_ids(tokenizer, n_tokens: int) -> list[int]:
    """``<bos>`` and Tiny Shakespeare's validation text, cut to ``n_tokens`` tokens in all (Gemma 3 270M is a
    base model: no chat format)."""
    text = helpers.load_tiny_shakespeare()
    return [tokenizer.bos_id] + tokenizer.encode(text[int(0.9 * len(text)) :][: 8 * n_tokens])[: n_tokens - 1]


def load_pair(model_name: str, dtype: torch.dtype, n_positions: int):
    """(our model, tokenizer, transformers' model on the same weights) in ``dtype``."""
    if model_name == "gemma3":
        model, tokenizer = load_gemma3(device="cpu", dtype=dtype, block_size=n_positions)
        return model, tokenizer, hf_gemma3(*gemma3_weights(), dtype=dtype)
    model, tokenizer = load_smollm2(device="cpu", dtype=dtype)
    state, hf_config, _ = smollm2_weights()
    return model, tokenizer, hf_llama(state, hf_config, dtype=dtype)


def flops_prefill(cfg, n_tokens: int) -> float:
    """Multiply-adds x 2 of a prefill: every weight matrix of the blocks once per token, attention's scores
    and weighted sums (causal: half of T^2 per head), and the output layer for the last position only."""
    per_layer = cfg.n_embd * (2 * cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim  # q, k, v and the output proj.
    per_layer += 3 * cfg.n_embd * cfg.ff_width
    attention = 2 * cfg.n_head * cfg.head_dim * n_tokens * (n_tokens + 1) / 2  # q.k and w.v, causal
    return 2 * (cfg.n_layer * (per_layer * n_tokens + attention) + cfg.vocab_size * cfg.n_embd)


def run_ours(model, ids, n_new):
    start = time.perf_counter()
    tokens = stream(model, ids, n_new)
    first = next(tokens)
    prefill = time.perf_counter() - start
    rest = list(tokens)
    return [first, *rest], prefill, (n_new - 1) / (time.perf_counter() - start - prefill)


def run_transformers(reference, ids, n_new):
    from transformers import GenerationConfig

    x = torch.tensor([ids])
    greedy = lambda n: GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)  # noqa: E731
    with torch.no_grad():
        start = time.perf_counter()
        reference.generate(x, generation_config=greedy(1))
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = reference.generate(x, generation_config=greedy(n_new))
        total = time.perf_counter() - start
    return out[0, len(ids):].tolist(), prefill, (n_new - 1) / (total - prefill)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "gemma3"])
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(helpers.summary())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    rss_start = peak_rss_mb()
    tick = time.perf_counter()
    n_positions = args.prompt_tokens + args.new_tokens
    gemma = args.model == "gemma3"
    model, tokenizer = load_gemma3(device="cpu", block_size=n_positions) if gemma else load_smollm2(device="cpu")
    print(f"our model loaded in {time.perf_counter() - tick:.1f} s; peak memory of the process "
          f"{rss_start:.0f} MB before loading, {peak_rss_mb():.0f} MB after (weights cached for later loads)")
    ids = (gemma_prompt_ids if gemma else prompt_ids)(tokenizer, args.prompt_tokens)
    flops = flops_prefill(model.config, len(ids))
    del model

    summary = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        ours_model, _, reference = load_pair(args.model, dtype, n_positions)
        peak = peak_gflops(1024, 3.0, dtype, torch.device("cpu"))
        run_ours(ours_model, ids[:32], 4)  # warm up both
        run_transformers(reference, ids[:32], 4)
        best = {"ours": (float("inf"), 0.0), "transformers": (float("inf"), 0.0)}
        tokens = {}
        for repeat in range(args.repeats):
            for who, run, impl in (("ours", run_ours, ours_model), ("transformers", run_transformers, reference)):
                out, prefill, rate = run(impl, ids, args.new_tokens)
                tokens.setdefault(who, out)
                assert out == tokens[who], f"{who}: greedy tokens changed between runs"
                best[who] = (min(best[who][0], prefill), max(best[who][1], rate))
                print(f"  {name} run {repeat + 1} {who:12}: prefill {prefill:.2f} s, {rate:.1f} new tokens/s")
        same = tokens["ours"] == tokens["transformers"]
        for who, (prefill, rate) in best.items():
            print(f"{name} {who:12}: prefill of {len(ids)} tokens {prefill:.2f} s "
                  f"({flops / prefill / 1e9:.1f} GFLOP/s, MFU {flops / prefill / 1e9 / peak:.0%} of {peak:.0f} "
                  f"GFLOP/s), decoding {rate:.1f} new tokens/s")
        speedup = best["ours"][1] / best["transformers"][1]
        print(f"{name}: ours decodes {speedup:.2f}x as fast as transformers; identical greedy tokens: {same}")
        summary.append(f"{name} {best['ours'][1]:.1f} vs {best['transformers'][1]:.1f} tok/s ({speedup:.2f}x, "
                       f"prefill {best['ours'][0]:.2f} vs {best['transformers'][0]:.2f} s, "
                       f"{'identical' if same else 'DIFFERENT'} tokens)")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"llm_generation {args.model} {len(ids)}+{args.new_tokens} tokens, {torch.get_num_threads()} threads, load {load}: "
          + "; ".join(summary))


if __name__ == "__main__":
    main()
