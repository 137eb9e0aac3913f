"""Character-level Tiny Shakespeare: train notebook 03's cpu-profile GPT for a fixed wall time.

    python benchmarks/lm_shakespeare.py --seconds 100

The clock starts when the script starts: loading the text, building the model, training and the
final evaluation all count. Training stops early enough to leave time for the evaluation, and the
learning rate's cosine decay follows the clock, so it ends at the floor whatever the machine's speed.
Model FLOP utilisation (MFU) compares the training FLOPs (nanoGPT's estimate: 6 per parameter per
token, plus the attention's 12 * layers * width * block per token) with the peak of a large fp32
matrix multiply on the same machine (``benchmarks/peak_matmul.py``), measured after the clock stops.
The validation loss is nanoGPT's (first 90% of the characters train, the last 10% validate),
computed exactly over the whole validation split rather than over random batches.

For comparison, nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, block 64, batch 12, 2,000
iterations, learning rate 1e-3) reaches about 1.92 in about 100 seconds on a 2-core machine:
``--recipe nanogpt`` runs it with this script's clock and evaluation.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import os  # noqa: E402

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning threads
# wait for each other's time slices and training runs many times slower. Export OMP_WAIT_POLICY=ACTIVE
# to override (it must be set before torch is imported).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import GPT, TransformerConfig, fit, load_tiny_shakespeare, recipes, seed_everything  # noqa: E402
from helpers.text import CharTokenizer, evaluate_lm, lm_batches, split_train_val  # noqa: E402

# Notebook 03's cpu-profile model, and nanoGPT's CPU configuration for comparison (both from helpers/recipes.py)
RECIPES = {"cpu": recipes.LANGUAGE_MODEL["cpu"], "nanogpt": recipes.NANOGPT_CPU}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=100.0, help="wall-time budget, evaluation included")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (helps only on CPUs with bf16 units)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model first (its compilation time counts against the budget)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-mfu", action="store_true", help="skip the peak-matmul measurement after training")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.recipe]
    seed_everything(args.seed)
    device = torch.device("cpu")
    autocast = torch.bfloat16 if args.bf16 else None

    text = load_tiny_shakespeare()
    tokenizer = CharTokenizer.train(text)
    train, val = split_train_val(torch.tensor(tokenizer.encode(text)))
    cfg = TransformerConfig(vocab_size=tokenizer.vocab_size, block_size=recipe["block_size"], n_layer=recipe["n_layer"],
                            n_head=recipe["n_head"], n_embd=recipe["n_embd"])
    model = GPT(cfg)
    trained = torch.compile(model) if args.compile else model  # shares model's parameters

    # Time one evaluation batch to reserve time for the final evaluation (with a margin).
    tick = time.perf_counter()
    evaluate_lm(model, val[: 64 * cfg.block_size + 1], cfg.block_size, autocast_dtype=autocast)
    eval_seconds = 0.5 + 1.5 * (time.perf_counter() - tick) * len(val) / (64 * cfg.block_size)
    budget = args.seconds - (time.perf_counter() - START) - eval_seconds

    steps = 1_000_000  # more than fit in the budget: the clock ends training
    history = fit(
        trained, lm_batches(train, cfg.block_size, recipe["batch_size"], seed=args.seed), steps=steps, lr=recipe["lr"],
        min_lr=recipe["lr"] / 10, warmup=int(0.05 * steps), betas=(0.9, 0.99), time_limit=budget,
        autocast_dtype=autocast, device=device, progress=False,
    )
    train_seconds = history.seconds[-1]
    val_loss = evaluate_lm(model, val, cfg.block_size, autocast_dtype=autocast)
    total = time.perf_counter() - START
    tokens = history.steps_done * recipe["batch_size"] * cfg.block_size
    print(f"recipe={args.recipe} params={model.num_parameters():,} threads={torch.get_num_threads()} "
          f"bf16={args.bf16} compile={args.compile} omp_wait_policy={os.environ['OMP_WAIT_POLICY']} "
          f"load_average={os.getloadavg()[0]:.1f} (other jobs on the machine slow training down)")
    print(f"steps={history.steps_done} tokens={tokens:,} train_seconds={train_seconds:.1f} "
          f"train_tokens_per_second={tokens / train_seconds:,.0f}")
    mfu = ""
    if not args.no_mfu:
        from peak_matmul import peak_gflops

        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad) - model.wpe.weight.numel()
        flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
        achieved = flops_per_token * tokens / train_seconds / 1e9
        peak = peak_gflops(2048, 5.0, torch.float32, device)
        mfu = f" model_gflops={achieved:.1f} peak_fp32_gflops={peak:.1f} mfu={achieved / peak:.1%}"
    print(f"val_loss={val_loss:.4f} wall_seconds={total:.1f}{mfu}")


if __name__ == "__main__":
    main()
