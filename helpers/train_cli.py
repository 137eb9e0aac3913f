"""Train a notebook's model from the command line, outside Jupyter, alone or under ``torchrun``.

    python -m helpers.train_cli shakespeare --profile cpu
    python -m helpers.train_cli arithmetic --profile ci --steps 200
    torchrun --nproc_per_node=4 -m helpers.train_cli cifar10 --profile gpu

Each task trains the model of one notebook with that notebook's recipe for the chosen profile,
prints the figures the notebook reports, and saves the checkpoint under the notebook's name in
``$TFS_DATA_DIR/checkpoints/`` (so the notebook, or ``helpers.load_checkpoint``, can pick it up):

============  ========  ==================================================================
task          notebook  model
============  ========  ==================================================================
shakespeare   03        character-level GPT on Tiny Shakespeare (validation loss per char)
arithmetic    04        addition with the abacus writing (exact match on held-out problems)
cifar10       06        compact Vision Transformer (test accuracy)
============  ========  ==================================================================

Under ``torchrun --nproc_per_node=N`` :func:`helpers.fit` trains with DistributedDataParallel: every
rank draws its own batches (its own random seed), ``--steps`` counts the steps of each rank, so N
processes see N times as many examples; metrics are averaged across ranks and only rank 0 prints
and writes the checkpoint.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import recipes
from .config import PROFILES, autocast_dtype, get_device, get_profile, pick, seed_everything, summary
from .distributed import Processes, is_main_process


def _log(*args):
    if is_main_process():
        print(*args, flush=True)


def train_shakespeare(hp: dict, steps: int | None, seconds: float | None, procs: Processes) -> dict:
    """Notebook 03's character-level GPT."""
    from .checkpoint import save_checkpoint
    from .data import load_tiny_shakespeare
    from .model import GPT, TransformerConfig
    from .text import CharTokenizer, evaluate_lm, lm_batches, split_train_val
    from .train import fit

    steps = steps or hp["steps"]
    text = load_tiny_shakespeare()
    chars = CharTokenizer.train(text)
    train_ids, val_ids = split_train_val(torch.tensor(chars.encode(text)))
    model = GPT(TransformerConfig(vocab_size=chars.vocab_size, block_size=hp["block_size"], n_layer=hp["n_layer"],
                                  n_head=hp["n_head"], n_embd=hp["n_embd"], dropout=hp["dropout"]))
    device = procs.device
    autocast = autocast_dtype(device)  # bfloat16 on recent GPUs, float16 + loss scaling on a T4, float32 on CPUs
    history = fit(model, lm_batches(train_ids, hp["block_size"], hp["batch_size"], seed=procs.rank), steps=steps,
                  lr=hp["lr"], min_lr=hp["lr"] / 10, betas=(0.9, 0.99), warmup=max(1, steps // 50),
                  val_data=lm_batches(val_ids, hp["block_size"], 64, seed=10_000), eval_batches=20,
                  eval_every=hp["eval_every"], keep_best=hp["keep_best"], patience=hp["patience"],
                  time_limit=seconds, autocast_dtype=autocast, device=device)
    val_loss = evaluate_lm(model, val_ids, hp["block_size"], autocast_dtype=autocast)
    save_checkpoint(model, "03_language_modelling", chars="".join(chars.chars), val_loss_per_char=round(val_loss, 4))
    return {"steps": history.steps_done, "val_loss_per_char": val_loss}


def train_arithmetic(hp: dict, steps: int | None, seconds: float | None, procs: Processes) -> dict:
    """Notebook 04's best writing: abacus addition."""
    from . import arithmetic as ar
    from .checkpoint import save_checkpoint
    from .train import fit

    steps = steps or hp["steps"]
    n = hp["max_digits"]
    test, test_full, val = ar.held_out_problems(hp["n_test"], hp["n_val"], n)  # val: what selection reads
    held_out = torch.cat([test, test_full, val])
    config = ar.ArithmeticConfig(representation="abacus", op="+", max_digits=n, n_layer=hp["n_layer"],
                                 n_head=hp["n_head"], n_embd=hp["n_embd"], max_place=n + 3)
    model = ar.ArithmeticModel(config)
    device = procs.device
    history = fit(model, ar.training_batches(config, hp["batch_size"], exclude=held_out, seed=procs.rank),
                  steps=steps, lr=hp["lr"], time_limit=seconds, device=device, autocast_dtype=hp["autocast_dtype"],
                  eval_every=max(1, steps // hp["curve_points"]), metrics={"accuracy": lambda m: ar.evaluate(m, val)},
                  keep_best=hp["keep_best"], patience=hp["patience"])
    accuracy, accuracy_full = ar.evaluate(model, test), ar.evaluate(model, test_full)
    save_checkpoint(model, "04_arithmetic", accuracy=accuracy, accuracy_full=accuracy_full)
    return {"steps": history.steps_done, "accuracy": accuracy, f"accuracy_{n}_digits": accuracy_full}


def train_cifar10(hp: dict, steps: int | None, seconds: float | None, procs: Processes) -> dict:
    """Notebook 06's compact Vision Transformer."""
    import torch.nn.functional as F

    from . import vision as V
    from .checkpoint import save_checkpoint
    from .train import fit
    from .vision.cifar import stratified_split

    train_images, train_labels = V.load_cifar10("train")
    test_images, test_labels = V.load_cifar10("test")
    if hp["n_train"] is not None and hp["n_train"] < len(train_images):
        keep = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[: hp["n_train"]]
        train_images, train_labels = train_images[keep], train_labels[keep]
    train_index, val_index = stratified_split(train_labels, hp["n_val"], seed=0)  # as notebook 06
    val_x, val_labels = V.normalize(train_images[val_index]), train_labels[val_index]
    train_images, train_labels = train_images[train_index], train_labels[train_index]
    batches = V.ImageBatches(train_images, train_labels, hp["batch_size"], seed=procs.rank)
    steps = steps or hp["epochs"] * len(batches) // procs.world_size
    test_x = V.normalize(test_images)
    model = V.VisionTransformer(V.ViTConfig(tokenizer="conv", pool="seq", **hp["vit"]))
    device = procs.device
    history = fit(model, batches, steps=steps, lr=hp["lr"], weight_decay=hp["weight_decay"], time_limit=seconds,
                  device=device, eval_every=len(batches) // procs.world_size,
                  metrics={"validation accuracy": lambda m: V.accuracy(m, val_x, val_labels)},
                  keep_best=hp["keep_best"], patience=hp["patience"],
                  loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1], label_smoothing=hp["label_smoothing"]))
    accuracy = V.accuracy(model, test_x, test_labels)
    save_checkpoint(model, "06_image_classification", classes=list(V.CIFAR10_CLASSES), mean=list(V.CIFAR10_MEAN),
                    std=list(V.CIFAR10_STD), test_accuracy=accuracy, train_images=len(train_images),
                    val_images=len(val_index))
    return {"steps": history.steps_done, "test_accuracy": accuracy}


# task -> (the notebook's recipe, the training function)
TASKS = {
    "shakespeare": (recipes.LANGUAGE_MODEL, train_shakespeare),
    "arithmetic": (recipes.ARITHMETIC, train_arithmetic),
    "cifar10": (recipes.IMAGE_CLASSIFICATION, train_cifar10),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m helpers.train_cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--profile", default=None,
                        help=f"the notebook profile whose recipe to use: {', '.join(PROFILES)} "
                             "(default: $TFS_PROFILE, else gpu/cpu from the hardware)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per process (default: the profile's)")
    parser.add_argument("--seconds", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    try:
        profile = get_profile(args.profile)
    except ValueError as err:
        parser.error(str(err))
    recipe, train = TASKS[args.task]
    seed_everything(args.seed)
    procs = Processes.start(get_device())  # joins the process group under torchrun
    _log(f"task={args.task} profile={profile} world_size={procs.world_size} | {summary()}")
    tick = time.perf_counter()
    result = train(pick(**recipe, profile=profile), args.steps, args.seconds, procs)
    result["seconds"] = round(time.perf_counter() - tick, 1)
    _log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    procs.finish()
    return result


if __name__ == "__main__":
    main()
