"""Steady-state training throughput of ``helpers.fit``, eager or compiled, fp32 or bf16 autocast.

    python benchmarks/train_throughput.py                      # nanoGPT's CPU configuration, eager fp32
    python benchmarks/train_throughput.py --compile --bf16     # the same, compiled, bf16 autocast
    OMP_WAIT_POLICY=ACTIVE python benchmarks/train_throughput.py

Trains a character-level GPT on Tiny Shakespeare with the shared loop and times the steps after the
first evaluation interval, so start-up (and torch.compile's compilation, reported separately) does
not count. ``--recipe nanogpt`` is nanoGPT's CPU configuration (4 layers, 4 heads, width 128, block
64, batch 12); ``--recipe cpu`` is notebook 03's cpu-profile model. The last line is the result.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import GPT, TransformerConfig, fit, load_tiny_shakespeare, recipes, seed_everything  # noqa: E402
from helpers.text import CharTokenizer, lm_batches, split_train_val  # noqa: E402

# Notebook 03's cpu-profile model, and nanoGPT's CPU configuration for comparison (both from helpers/recipes.py)
RECIPES = {"cpu": recipes.LANGUAGE_MODEL["cpu"], "nanogpt": recipes.NANOGPT_CPU}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="nanogpt")
    parser.add_argument("--steps", type=int, default=330, help="steps in all; the first --warmup-steps are not timed")
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args()
    if args.steps <= 2 * args.warmup_steps:
        parser.error("--steps must be more than twice --warmup-steps")
    recipe = RECIPES[args.recipe]
    seed_everything(0)
    text = load_tiny_shakespeare()
    tokenizer = CharTokenizer.train(text)
    train, _ = split_train_val(torch.tensor(tokenizer.encode(text)))
    model = GPT(TransformerConfig(vocab_size=tokenizer.vocab_size, block_size=recipe["block_size"],
                                  n_layer=recipe["n_layer"], n_head=recipe["n_head"], n_embd=recipe["n_embd"]))
    trained = torch.compile(model) if args.compile else model
    history = fit(trained, lm_batches(train, recipe["block_size"], recipe["batch_size"], seed=0), steps=args.steps,
                  lr=recipe["lr"], eval_every=args.warmup_steps, progress=False, device="cpu",
                  autocast_dtype=torch.bfloat16 if args.bf16 else None)
    tokens_per_step = recipe["batch_size"] * recipe["block_size"]
    timed_steps = history.step[-1] - history.step[0]
    rate = timed_steps * tokens_per_step / (history.seconds[-1] - history.seconds[0])
    print(f"train_throughput recipe={args.recipe} compile={args.compile} bf16={args.bf16} "
          f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}: "
          f"first {history.step[0]} steps {history.seconds[0]:.1f} s, then {rate:,.0f} tokens/s over {timed_steps} "
          f"steps (training loss {history.train_loss[0]:.3f} -> {history.train_loss[-1]:.3f})")


if __name__ == "__main__":
    main()
