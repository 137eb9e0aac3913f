"""Piano performances (MAESTRO) as note events: each note four tokens (pitch, time since the previous note
started, duration, velocity), sampled so that every generated sequence decodes.
"""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import torch

from ..config import is_offline
from ..data import DatasetInfo, OfflineError, RemoteFile, fetch_file, register
from ..generate import sample_next
from ..model import GPT, evaluating
from .notes import Note, read_midi

MAESTRO = register(
    DatasetInfo(
        name="maestro",
        description="MAESTRO v3.0.0 (MIDI only): 1,276 piano performances, about 200 hours, with a "
        "train/validation/test split (CC BY-NC-SA 4.0).",
        homepage="https://magenta.tensorflow.org/datasets/maestro",
        files=(
            RemoteFile(
                "maestro/maestro-v3.0.0-midi.zip",
                "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip",
                "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c",
            ),
        ),
    )
)


# --------------------------------------------------------------------------- note events (MAESTRO)

SHIFT_BINS = np.concatenate([[0.0], np.geomspace(0.01, 4.0, 63)])  # seconds since the previous note started
DURATION_BINS = np.geomspace(0.01, 8.0, 64)  # seconds
VELOCITY_BINS = 32  # 4 velocity steps per bin
EVENT_OFFSETS = {"pitch": 0, "shift": 128, "duration": 128 + 64, "velocity": 128 + 128}
EVENT_BOS = 128 + 128 + VELOCITY_BINS  # 288
EVENT_VOCAB_SIZE = EVENT_BOS + 1  # 289


def _nearest(bins: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest bin (on a log scale, where the bins are spaced)."""
    return np.abs(np.log(bins[None, :] + 1e-3) - np.log(values[:, None] + 1e-3)).argmin(1)


def encode_notes(notes: list[Note]) -> torch.Tensor:
    """Notes -> (4N,) event tokens, per note: pitch, time shift since the previous note's start,
    duration, velocity (each in its own id range, see ``EVENT_OFFSETS``)."""
    if not notes:
        return torch.zeros(0, dtype=torch.long)
    notes = sorted(notes, key=lambda n: (n.start, n.pitch))
    pitch = np.array([n.pitch for n in notes])
    start = np.array([n.start for n in notes])
    shift = np.diff(start, prepend=start[0])
    duration = np.array([n.end - n.start for n in notes])
    velocity = np.clip(np.array([n.velocity for n in notes]) // (128 // VELOCITY_BINS), 0, VELOCITY_BINS - 1)
    tokens = np.stack([
        pitch + EVENT_OFFSETS["pitch"],
        _nearest(SHIFT_BINS, shift) + EVENT_OFFSETS["shift"],
        _nearest(DURATION_BINS, duration) + EVENT_OFFSETS["duration"],
        velocity + EVENT_OFFSETS["velocity"],
    ], axis=1)  # (N, 4)
    return torch.from_numpy(tokens.reshape(-1)).long()


def decode_notes(tokens: torch.Tensor) -> list[Note]:
    """(4N,) event tokens -> notes (times and velocities at their bins' values)."""
    tokens = torch.as_tensor(tokens).long().view(-1, 4).numpy()  # (N, 4)
    lows = np.array(list(EVENT_OFFSETS.values()))
    highs = np.array([128, 128 + 64, 128 + 128, EVENT_BOS])
    if ((tokens < lows) | (tokens >= highs)).any():
        raise ValueError("each note must be 4 tokens: pitch, shift, duration, velocity, in their id ranges")
    rel = tokens - lows
    start = np.cumsum(SHIFT_BINS[rel[:, 1]])
    duration = DURATION_BINS[rel[:, 2]]
    velocity = rel[:, 3] * (128 // VELOCITY_BINS) + 128 // VELOCITY_BINS // 2
    return [Note(int(p), float(s), float(s + d), int(v)) for p, s, d, v in zip(rel[:, 0], start, duration, velocity, strict=True)]


def generate_events(model: GPT, n_notes: int, *, temperature: float = 1.0, top_k: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n_notes`` notes as (4 * n_notes,) event tokens, after BOS. At each position only the
    ids of that slot (pitch, shift, duration, velocity) may be sampled, so the result always decodes."""

    if 4 * n_notes + 1 > model.config.block_size:
        raise ValueError(f"{n_notes} notes need {4 * n_notes + 1} positions; the model has {model.config.block_size}")
    device = next(model.parameters()).device
    lows = list(EVENT_OFFSETS.values())
    highs = [128, 128 + 64, 128 + 128, EVENT_BOS]
    allowed = torch.zeros(4, EVENT_VOCAB_SIZE, dtype=torch.bool, device=device)
    for slot in range(4):
        allowed[slot, lows[slot] : highs[slot]] = True
    cache = model.new_cache(1, max_len=4 * n_notes + 1)
    token = torch.tensor([[EVENT_BOS]], device=device)
    out = []
    with evaluating(model):
        for i in range(4 * n_notes):
            logits = model(token, cache=cache)[:, -1].masked_fill(~allowed[i % 4], float("-inf"))
            token = sample_next(logits, temperature, top_k, None, generator)
            out.append(token)
    return torch.cat(out, dim=1)[0].cpu()


def read_maestro_zip(path, split: str = "train", max_files: int | None = None) -> list[torch.Tensor]:
    """Event tokens of the performances of ``split`` in a MAESTRO zip: one ``(4N,)`` tensor per file.
    The zip holds ``<root>/<root>.csv`` (columns ``split`` and ``midi_filename``) and the MIDI files."""
    if split not in ("train", "validation", "test"):
        raise ValueError(f"split must be 'train', 'validation' or 'test', not {split!r}")
    with zipfile.ZipFile(path) as archive:
        index = next(n for n in archive.namelist() if n.endswith(".csv"))
        root = index.rsplit("/", 1)[0] + "/" if "/" in index else ""
        rows = list(csv.DictReader(io.TextIOWrapper(archive.open(index), encoding="utf-8")))
        files = [root + r["midi_filename"] for r in rows if r["split"] == split][:max_files]
        return [encode_notes(read_midi(archive.read(name))) for name in files]


def load_maestro(split: str = "train", max_files: int | None = None) -> list[torch.Tensor]:
    """MAESTRO v3.0.0 performances as event tokens (downloads 58 MB; online only)."""
    if is_offline():
        raise OfflineError("maestro: MAESTRO is not in the offline mirror; unset TFS_OFFLINE to download it (58 MB)")
    return read_maestro_zip(fetch_file(MAESTRO.files[0], MAESTRO.name), split, max_files)
