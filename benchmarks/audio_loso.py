"""Notebook 07's spoken-digit recipe, measured and chosen without looking at the test recordings.

    python benchmarks/audio_loso.py [--split loso|validate|official] [--test] [--steps N] [--seeds 0 1 2]
                                    [--speakers ...] [--plain] [--set n_mfcc=13 ...] [--no-augment] [--threads 1]

Three ways to split FSDD, each training notebook 07's model with its cpu-profile recipe
(helpers.recipes.AUDIO_CLASSIFICATION["cpu"]: batch 64, learning rate 2e-3, weight decay, `audio.Augment()`):

* ``--split loso`` (the default; ``loso_steps`` steps): leave one speaker out, the figure the notebook reports.
  For each speaker, train on the other five and test on all 500 recordings of the held-out one.
* ``--split validate`` (``loso_steps`` steps): how the leave-one-speaker-out recipe is chosen, never on the
  speaker it is tested on. For each tested speaker, the next speaker in FSDD's order (cyclically: george's
  validation speaker is jackson, ..., yweweler's is george) is held out as the validation speaker and the
  model trains on the remaining four; the line printed is the accuracy on the validation speaker. A setting
  is chosen for a tested speaker on its own row, which never saw that speaker.
* ``--split official`` (``steps`` steps): the official split's training recordings (index 5-49) less the
  validation split (index 5-9, 300 clips: `audio.validation_split`); prints the validation accuracy and
  cross-entropy, the figures the notebook's choices are made on. ``--test`` also prints the accuracy on the
  300 official test recordings (index 0-4): run it once, for the chosen recipe.

``--plain`` switches off the features' recording steps (pre-emphasis, noise floor, speech-frame mean:
`AudioConfig(pre_emphasis=0, floor_db=None, speech_db=None)`); ``--set NAME=VALUE`` changes any other
`AudioConfig` field (``--set n_mfcc=0``, ``--set architecture=causal``). A single run moves by several points
per speaker with the seed, and with the number of threads (the sums are done in a different order), so
compare recipes over seeds with the same ``--threads``. Needs the FSDD recordings (cache,
`TFS_DATA_MIRROR`, or online). The last line is the result: the mean over speakers (or the official
split's figures) for each seed, and over all runs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import time

import torch
import torch.nn.functional as F

import helpers
from helpers import audio, recipes

# Notebook 07's model and its cpu-profile training recipe (helpers/recipes.py)
RECIPE = recipes.AUDIO_CLASSIFICATION["cpu"]
PLAIN = dict(pre_emphasis=0, floor_db=None, speech_db=None)  # the features without their recording steps


def validation_speaker(speaker: str) -> str:
    """The speaker held out for choosing settings when `speaker` is the one tested: the next in FSDD's order."""
    i = audio.FSDD_SPEAKERS.index(speaker)
    return audio.FSDD_SPEAKERS[(i + 1) % len(audio.FSDD_SPEAKERS)]


def score(model: audio.AudioClassifier, recordings) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on a list of recordings."""
    with helpers.evaluating(model):
        x, mask = audio.pad_features(model.featurize([r.waveform for r in recordings]))
        y = torch.tensor([r.digit for r in recordings])
        logits = model(x, mask)
    return (logits.argmax(-1) == y).float().mean().item(), F.cross_entropy(logits, y).item()


def train_and_score(train, evaluated: dict, cfg: audio.AudioConfig, steps: int, seed: int, augment: bool,
                    curve_every: int = 0):
    """Train a fresh model on `train`; return it, {name: (accuracy, cross-entropy)} for each list in
    `evaluated`, the training seconds, and (with `curve_every`) the accuracy on the first list in
    `evaluated` every `curve_every` steps as {step: accuracy}."""
    helpers.seed_everything(seed)
    model = audio.AudioClassifier(cfg)
    train_x = model.featurize([r.waveform for r in train])
    train_y = torch.tensor([r.digit for r in train])
    batches = audio.make_batches(train_x, train_y, RECIPE["batch_size"], torch.Generator().manual_seed(seed),
                                 audio.Augment() if augment else None)
    first = next(iter(evaluated.values()))
    metrics = {"accuracy": lambda m: score(m, first)[0]} if curve_every else None
    start = time.perf_counter()
    history = helpers.fit(model, batches, steps=steps, lr=RECIPE["lr"], loss_fn=audio.classification_loss,
                          weight_decay=RECIPE["weight_decay"], progress=False, device="cpu", metrics=metrics,
                          eval_every=curve_every or None)
    seconds = time.perf_counter() - start  # with a curve: its evaluations included
    curve = dict(zip(history.step, history.metrics["accuracy"], strict=True)) if curve_every else {}
    return model, {name: score(model, recordings) for name, recordings in evaluated.items()}, seconds, curve


def parse_settings(pairs: list[str]) -> dict:
    """["n_mfcc=13", "architecture=causal"] -> {"n_mfcc": 13, "architecture": "causal"}."""
    names = {f.name for f in dataclasses.fields(audio.AudioConfig)}
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in names:
            raise SystemExit(f"--set {pair}: AudioConfig has no field {name!r}")
        try:
            out[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name] = value  # a bare string such as causal
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("loso", "validate", "official"), default="loso")
    parser.add_argument("--test", action="store_true", help="official split: also the test accuracy (once)")
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's loso_steps, or steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--speakers", nargs="+", default=list(audio.FSDD_SPEAKERS), choices=audio.FSDD_SPEAKERS)
    parser.add_argument("--plain", action="store_true", help="plain log-mel features (no recording steps)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="change an AudioConfig field, e.g. n_mfcc=13 or architecture=causal")
    parser.add_argument("--no-augment", action="store_true", help="train without audio.Augment()")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--curve", type=int, default=0, metavar="N",
                        help="also print the validation (or held-out) accuracy every N steps of training")
    parser.add_argument("--save", metavar="NAME", help="official split: save the trained model as checkpoint NAME")
    parser.add_argument("--load", metavar="NAME", help="official split: evaluate checkpoint NAME, no training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or RECIPE["steps" if args.split == "official" else "loso_steps"]
    print(helpers.summary())
    cfg = audio.AudioConfig(**RECIPE["model"] | (PLAIN if args.plain else {}) | parse_settings(args.settings))
    print(cfg, f"\nsplit {args.split}, {steps} steps", flush=True)
    recordings = audio.load_fsdd()
    augment = not args.no_augment
    means = []
    for seed in args.seeds:
        if args.split == "official":
            train, test = audio.split_fsdd(recordings)
            train, val = audio.validation_split(train)
            evaluated = {"validation": val} | ({"test": test} if args.test else {})
            if args.load:
                model, seconds, curve = helpers.load_checkpoint(args.load), 0.0, {}
                scores = {name: score(model, recordings) for name, recordings in evaluated.items()}
            else:
                model, scores, seconds, curve = train_and_score(train, evaluated, cfg, steps, seed, augment, args.curve)
            if args.save:
                helpers.save_checkpoint(model, args.save, seed=seed, steps=steps)
            figures = "  ".join(f"{name} {acc:6.2%} (cross-entropy {loss:.4f})" for name, (acc, loss) in scores.items())
            print(f"seed {seed}  {len(train)} training clips  {figures}  ({seconds:.0f} s)", flush=True)
            if curve:
                print("  validation accuracy by step:", "  ".join(f"{k}: {v:.2%}" for k, v in curve.items()))
            means.append(scores["validation"][0])
            continue
        accuracy = {}
        for speaker in args.speakers:
            train, test = audio.split_fsdd(recordings, test_speaker=speaker)
            if args.split == "validate":
                held_out = validation_speaker(speaker)
                train, test = audio.split_fsdd(train, test_speaker=held_out)
            _, scores, seconds, curve = train_and_score(train, {"held out": test}, cfg, steps, seed, augment,
                                                        args.curve)
            accuracy[speaker] = scores["held out"][0]
            what = f"validation speaker {held_out:9s}" if args.split == "validate" else "held out"
            print(f"seed {seed}  tested {speaker:9s} {what} {accuracy[speaker]:6.1%}  ({seconds:.0f} s)", flush=True)
            if curve:
                print("  accuracy by step:", "  ".join(f"{k}: {v:.1%}" for k, v in curve.items()), flush=True)
        means.append(sum(accuracy.values()) / len(accuracy))
    per_seed = ", ".join(f"seed {s}: {m:.2%}" for s, m in zip(args.seeds, means, strict=True))
    what = "validation accuracy" if args.split != "loso" else "held-out accuracy"
    where = "official split" if args.split == "official" else f"mean over {len(args.speakers)} speakers"
    print(f"{what}, {where}: {per_seed}; over all runs {sum(means) / len(means):.2%}")


if __name__ == "__main__":
    main()
