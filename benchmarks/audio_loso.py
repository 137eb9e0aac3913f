"""Leave-one-speaker-out accuracy of notebook 07's spoken-digit recipe, over several seeds.

    python benchmarks/audio_loso.py [--steps 1000] [--seeds 0 1 2] [--plain] [--no-augment] [--threads 1]

For each seed and each of FSDD's six speakers, trains notebook 07's model on the other five speakers
(helpers.recipes.AUDIO_CLASSIFICATION["cpu"]: batch 64, learning rate 2e-3, `audio.Augment()`) and tests it on all 500 recordings of the held-out one.
`--plain` switches off the features' recording steps (pre-emphasis, noise floor, speech-frame mean:
`AudioConfig(pre_emphasis=0, floor_db=None, speech_db=None)`), as the notebook's second closing exercise
asks. A single run moves by several points per speaker with the seed, and with the number of threads (the
sums are done in a different order), so compare recipes over seeds with the same `--threads`. Needs the
FSDD recordings (cache, `TFS_DATA_MIRROR`, or online). The last line is the result: the mean over speakers
for each seed, and over all runs.
"""

from __future__ import annotations

import argparse
import time

import torch

import helpers
from helpers import audio, recipes

# Notebook 07's model and its cpu-profile training recipe (helpers/recipes.py)
RECIPE = recipes.AUDIO_CLASSIFICATION["cpu"]
PLAIN = dict(pre_emphasis=0, floor_db=None, speech_db=None)  # the features without their recording steps


def loso_accuracy(recordings, cfg: audio.AudioConfig, speaker: str, steps: int, seed: int, augment: bool) -> float:
    """Train on every speaker but `speaker`, return the accuracy on all of `speaker`'s recordings."""
    helpers.seed_everything(seed)
    train, test = audio.split_fsdd(recordings, test_speaker=speaker)
    model = audio.AudioClassifier(cfg)
    train_x, test_x = model.featurize([r.waveform for r in train]), model.featurize([r.waveform for r in test])
    train_y, test_y = torch.tensor([r.digit for r in train]), torch.tensor([r.digit for r in test])
    batches = audio.make_batches(train_x, train_y, RECIPE["batch_size"], torch.Generator().manual_seed(seed),
                                 audio.Augment() if augment else None)
    helpers.fit(model, batches, steps=steps, lr=RECIPE["lr"], loss_fn=audio.classification_loss,
                weight_decay=RECIPE["weight_decay"], progress=False, device="cpu")
    return (model.classify(test_x) == test_y).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=RECIPE["loso_steps"], help="training steps per held-out speaker")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--speakers", nargs="+", default=list(audio.FSDD_SPEAKERS), choices=audio.FSDD_SPEAKERS)
    parser.add_argument("--plain", action="store_true", help="plain log-mel features (no recording steps)")
    parser.add_argument("--no-augment", action="store_true", help="train without audio.Augment()")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(helpers.summary())
    cfg = audio.AudioConfig(**(RECIPE["model"] | PLAIN if args.plain else RECIPE["model"]))
    print(cfg)
    recordings = audio.load_fsdd()
    means = []
    for seed in args.seeds:
        accuracy = {}
        for speaker in args.speakers:
            start = time.perf_counter()
            accuracy[speaker] = loso_accuracy(recordings, cfg, speaker, args.steps, seed, not args.no_augment)
            print(f"seed {seed}  held out {speaker:9s} {accuracy[speaker]:6.1%}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)
        means.append(sum(accuracy.values()) / len(accuracy))
    per_seed = ", ".join(f"seed {s}: {m:.1%}" for s, m in zip(args.seeds, means, strict=True))
    print(f"mean over {len(args.speakers)} speakers: {per_seed}; over all runs {sum(means) / len(means):.1%}")


if __name__ == "__main__":
    main()
