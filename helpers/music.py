"""Music: Bach chorales as token sequences, piano performances as note events, MIDI files and a
tiny synthesizer.

JSB Chorales (the Coconet format): each chorale is a grid ``(T, 4)`` of MIDI pitches, one row per
16th note, the four voices soprano, alto, tenor and bass in columns, -1 for silence. We read it as
a sentence by interleaving the voices step after step::

    step 0: S A T B | step 1: S A T B | ...   ->   [BOS, S0, A0, T0, B0, S1, A1, T1, B1, ...]

Token ids are the MIDI pitches 0-127, then ``REST`` (128) and ``BOS`` (129), so the shared
:class:`~helpers.model.GPT` models chorales with a 130-word vocabulary. Every training window starts
at a step boundary, so a position's voice is fixed by the position alone.

MAESTRO piano performances are too free for a grid; a performance is a list of notes, each encoded
as four tokens (pitch, time since the previous note started, duration, velocity).
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .config import is_offline
from .data import DatasetInfo, RemoteFile, fetch_file, register
from .generate import generate
from .model import GPT

VOICES = 4  # soprano, alto, tenor, bass
REST = 128
BOS = 129
VOCAB_SIZE = 130

JSB = register(
    DatasetInfo(
        name="jsb-chorales",
        description="JSB Chorales: 382 four-part Bach chorales (229/76/77 train/valid/test) quantised to "
        "16th notes, in the Coconet format (Huang et al., 2017).",
        homepage="https://github.com/czhuang/JSB-Chorales-dataset",
        files=(
            RemoteFile(
                "jsb-chorales/Jsb16thSeparated.json",
                "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/master/Jsb16thSeparated.json",
                "79294cc374f9252e95ef4b703161524c1c53dc1f712c236f00f1c1f5d54af5a7",
            ),
        ),
    )
)

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

# --------------------------------------------------------------------------- chorales


def load_jsb_chorales(split: str = "train") -> list[torch.Tensor]:
    """The chorales of one split (``train`` 229, ``valid`` 76, ``test`` 77), each ``(T, 4)`` int64:
    MIDI pitches of soprano, alto, tenor, bass per 16th note, -1 for silence.

    We read the JSON copy of the data: the ``.npz`` holds object arrays that only unpickling can read.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', not {split!r}")
    path = fetch_file(JSB.files[0], JSB.name)
    data = json.loads(path.read_text())
    return [torch.tensor(chorale, dtype=torch.long).view(-1, VOICES) for chorale in data[split]]


def encode_chorale(steps: torch.Tensor) -> torch.Tensor:
    """(T, 4) pitches (-1 = silence) -> (4T,) tokens, the voices interleaved step after step."""
    steps = torch.as_tensor(steps)
    if steps.dim() != 2 or steps.size(1) != VOICES:
        raise ValueError(f"a chorale is (steps, {VOICES}) pitches, not {tuple(steps.shape)}")
    if steps.numel() and (steps.min() < -1 or steps.max() > 127):
        raise ValueError("pitches must be MIDI numbers 0-127, or -1 for silence")
    return torch.where(steps < 0, REST, steps).long().reshape(-1)


def decode_chorale(tokens: torch.Tensor) -> torch.Tensor:
    """(4T,) tokens -> (T, 4) pitches, -1 for silence (the inverse of :func:`encode_chorale`)."""
    tokens = torch.as_tensor(tokens).long()
    if tokens.dim() != 1 or tokens.numel() % VOICES:
        raise ValueError(f"expected a 1-d sequence of whole steps ({VOICES} tokens each), got {tuple(tokens.shape)}")
    if ((tokens < 0) | (tokens > REST)).any():
        raise ValueError(f"tokens must be pitches 0-127 or REST={REST}; drop the BOS token before decoding")
    return torch.where(tokens == REST, -1, tokens).view(-1, VOICES)


def transpose_chorale(steps: torch.Tensor, semitones: int) -> torch.Tensor:
    """Shift every sounding pitch by ``semitones`` (silence stays silence)."""
    return torch.where(steps < 0, steps, (steps + semitones).clamp(0, 127))


def chorale_sequence(steps: torch.Tensor) -> torch.Tensor:
    """(T, 4) pitches -> the model's reading of a chorale, ``[BOS] + tokens``: (4T + 1,) ids."""
    return torch.cat([torch.tensor([BOS]), encode_chorale(steps)])


def token_batches(sequences: list[torch.Tensor], block_size: int, batch_size: int, transpose: int = 0,
                  generator: torch.Generator | None = None):
    """A callable ``step -> (x, y)`` of random windows for :func:`helpers.fit`: x, y (B, block_size) ids,
    y shifted by one. Each sequence starts with a BOS token and then groups of 4 tokens (a chorale's
    step, or a note's 4 events); windows start at a multiple of 4, so the role of a token is fixed by
    its position. ``transpose`` shifts the pitch tokens (ids 0-127) of each window by a random number
    of semitones in ``[-transpose, transpose]`` (data augmentation)."""
    if block_size % VOICES:
        raise ValueError(f"block_size must be a multiple of {VOICES} so windows start on a step")
    too_short = sum(s.numel() < block_size + 1 for s in sequences)
    if too_short:
        raise ValueError(f"{too_short} sequences are shorter than block_size + 1 = {block_size + 1} tokens; "
                         "use a smaller block_size")
    # Every (sequence, start) pair, so that each window of the data is equally likely.
    starts = torch.tensor([(i, s) for i, seq in enumerate(sequences) for s in range(0, seq.numel() - block_size, VOICES)])
    offsets = torch.arange(block_size + 1)

    def batch(_step):
        pick = starts[torch.randint(len(starts), (batch_size,), generator=generator)]
        windows = torch.stack([sequences[i][s + offsets] for i, s in pick.tolist()])  # (B, block + 1)
        if transpose:
            shift = torch.randint(-transpose, transpose + 1, (batch_size, 1), generator=generator)
            windows = torch.where(windows < 128, (windows + shift).clamp(0, 127), windows)
        return windows[:, :-1], windows[:, 1:]

    return batch


def chorale_batches(chorales: list[torch.Tensor], block_size: int, batch_size: int, transpose: int = 0,
                    generator: torch.Generator | None = None):
    """Random training windows of chorales read as ``[BOS] + tokens`` (see :func:`token_batches`)."""
    return token_batches([chorale_sequence(c) for c in chorales], block_size, batch_size, transpose, generator)


@torch.no_grad()
def chorale_nll(model: GPT, chorales: list[torch.Tensor], stride: int | None = None, batch_size: int = 32) -> float:
    """Mean negative log-likelihood (nats) per token of whole chorales under ``model``.

    Each chorale is read as ``[BOS] + tokens``; chorales longer than the model's block are scored with
    sliding windows (``stride`` tokens apart, a multiple of 4), each token once, with at least
    ``block_size - stride`` tokens of context. NLL per 16th-note step is 4 times this.
    """
    block = model.config.block_size
    stride = stride or block // 2
    if stride % VOICES or not 0 < stride <= block:
        raise ValueError(f"stride must be a multiple of {VOICES} between 4 and block_size={block}")
    xs, ys = [], []
    for c in chorales:
        seq = chorale_sequence(c)
        scored = 0  # targets seq[1:scored + 1] are already counted
        for start in range(0, seq.numel() - 1, stride):
            x = seq[start : start + block]
            y = seq[start + 1 : start + block + 1].clone()
            y[: max(0, scored - start)] = -100  # already scored by the previous window
            scored = start + y.numel()
            xs.append(F.pad(x, (0, block - x.numel()), value=REST))
            ys.append(F.pad(y, (0, block - y.numel()), value=-100))
            if scored >= seq.numel() - 1:
                break
    x, y = torch.stack(xs), torch.stack(ys)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size].to(device)).float()
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + batch_size].to(device).flatten(),
                                 ignore_index=-100, reduction="sum").item()
    model.train(was_training)
    return total / int((y != -100).sum())


def unigram_nll(train: list[torch.Tensor], test: list[torch.Tensor]) -> float:
    """Baseline 1: every token drawn from the training set's token frequencies (add-one smoothed),
    ignoring all context. Mean NLL per token of ``test``."""
    counts = torch.bincount(torch.cat([encode_chorale(c) for c in train]), minlength=REST + 1).double() + 1
    log_p = (counts / counts.sum()).log()
    tokens = torch.cat([encode_chorale(c) for c in test])
    return float(-log_p[tokens].mean())


def repeat_nll(train: list[torch.Tensor], test: list[torch.Tensor]) -> float:
    """Baseline 2: "each voice repeats what it sang one step earlier", as a distribution: with
    probability ``lam`` the previous step's token, otherwise a unigram draw. ``lam`` is fitted on
    ``train``; the first step of a chorale has no previous step and uses the unigram alone.
    Mean NLL per token of ``test``."""
    counts = torch.bincount(torch.cat([encode_chorale(c) for c in train]), minlength=REST + 1).double() + 1
    p_uni = counts / counts.sum()

    def pieces(chorales):
        first, same, p_cur = [], [], []
        for c in chorales:
            tok = encode_chorale(c)
            first.append(p_uni[tok[:VOICES]])
            same.append((tok[VOICES:] == tok[:-VOICES]).double())
            p_cur.append(p_uni[tok[VOICES:]])
        return torch.cat(first), torch.cat(same), torch.cat(p_cur)

    _, same, p_cur = pieces(train)
    lam = 0.5
    for _ in range(100):  # EM for the mixture weight: lam <- mean responsibility of "repeat"
        lam = float((lam * same / (lam * same + (1 - lam) * p_cur)).mean())
    first, same, p_cur = pieces(test)
    rest = -(lam * same + (1 - lam) * p_cur).log()
    return float((rest.sum() - first.log().sum()) / (len(first) + len(rest)))


@torch.no_grad()
def generate_chorale(model: GPT, n_steps: int, prompt: torch.Tensor | None = None, *, temperature: float = 1.0,
                     top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample a chorale of ``n_steps`` new 16th-note steps, from scratch or after ``prompt`` (T0, 4).

    Returns (T0 + n_steps, 4) pitches. Past the model's block the context is the last half block,
    cut at a step boundary so every position keeps the voice it was trained on.
    """
    block = model.config.block_size
    device = next(model.parameters()).device
    seq = torch.tensor([BOS])
    if prompt is not None:
        seq = torch.cat([seq, encode_chorale(prompt)])
    target = seq.numel() + VOICES * n_steps
    while seq.numel() < target:
        keep = seq.numel() if seq.numel() < block else block // 2
        start = seq.numel() - keep
        start += (-start) % VOICES  # a window starts on a step boundary (BOS counts as position -1 of step 0)
        context = seq[start:]
        new = min(block - context.numel(), target - seq.numel())
        out = generate(model, context[None].to(device), new, temperature=temperature, top_k=top_k,
                       generator=generator)[0].cpu()
        seq = torch.cat([seq, out[context.numel():]])
    tokens = seq[1:]
    tokens = torch.where(tokens == BOS, REST, tokens)  # BOS is never a target, so practically never sampled
    return decode_chorale(tokens)


# --------------------------------------------------------------------------- notes and MIDI


class Note(NamedTuple):
    pitch: int  # MIDI 0-127
    start: float  # seconds
    end: float  # seconds
    velocity: int = 80  # 1-127
    channel: int = 0  # MIDI channel 0-15 (a chorale puts each voice on its own)


def chorale_to_notes(steps: torch.Tensor, seconds_per_step: float = 0.15, velocity: int = 80) -> list[Note]:
    """(T, 4) pitches -> notes, voice v on MIDI channel v (two voices may sing the same pitch at
    once). A voice holding the same pitch on consecutive steps is one note: the 16th-note grid cannot
    tell a held note from a repeated one, and we choose held."""
    steps = torch.as_tensor(steps).tolist()
    notes = []
    for v in range(VOICES):
        start = 0
        for t in range(1, len(steps) + 1):
            if t == len(steps) or steps[t][v] != steps[start][v]:
                if steps[start][v] >= 0:
                    notes.append(Note(steps[start][v], start * seconds_per_step, t * seconds_per_step, velocity, v))
                start = t
    return sorted(notes, key=lambda n: (n.start, n.channel, n.pitch))


def write_midi(notes: list[Note], path, *, bpm: float = 120.0, ticks_per_beat: int = 480, program: int = 0) -> Path:
    """Write notes to a one-track MIDI file with ``mido`` (times rounded to the nearest tick), every
    channel playing General MIDI ``program`` (0: piano, 19: church organ)."""
    import mido

    if not notes:
        raise ValueError("no notes to write")
    tempo = mido.bpm2tempo(bpm)  # microseconds per beat
    ticks = lambda seconds: round(mido.second2tick(seconds, ticks_per_beat, tempo))
    events = []  # (tick, order, message): note-offs sort before note-ons at the same tick
    for n in notes:
        if not (0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 and 0 <= n.channel <= 15 and n.end > n.start >= 0):
            raise ValueError(f"invalid note {n}: pitch 0-127, velocity 1-127, channel 0-15 and end > start >= 0")
        events.append((ticks(n.start), 1, mido.Message("note_on", note=n.pitch, velocity=n.velocity, channel=n.channel)))
        events.append((ticks(n.end), 0, mido.Message("note_off", note=n.pitch, velocity=0, channel=n.channel)))
    channels = sorted({n.channel for n in notes})
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=tempo)]
                           + [mido.Message("program_change", program=program, channel=c) for c in channels])
    now = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mido.MidiFile(tracks=[track], ticks_per_beat=ticks_per_beat).save(path)
    return path


def read_midi(source) -> list[Note]:
    """Notes of a MIDI file (a path, or bytes) read with ``mido``, in seconds, sorted by start.
    Every track is merged; a note-on is closed by the next note-off (or note-on) of its pitch and
    channel. The sustain pedal is ignored."""
    import mido

    midi = mido.MidiFile(file=io.BytesIO(source)) if isinstance(source, bytes) else mido.MidiFile(str(source))
    notes, sounding, now = [], {}, 0.0
    for msg in midi:  # merged tracks; msg.time is the delta in seconds, tempo changes applied
        now += msg.time
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if key in sounding:  # a note-off, or a new note-on, ends the sounding note
            start, velocity = sounding.pop(key)
            if now > start:
                notes.append(Note(msg.note, start, now, velocity, msg.channel))
        if msg.type == "note_on" and msg.velocity > 0:
            sounding[key] = (now, msg.velocity)
    return sorted(notes, key=lambda n: (n.start, n.channel, n.pitch))


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


@torch.no_grad()
def generate_events(model: GPT, n_notes: int, *, temperature: float = 1.0, top_k: int | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n_notes`` notes as (4 * n_notes,) event tokens, after BOS. At each position only the
    ids of that slot (pitch, shift, duration, velocity) may be sampled, so the result always decodes."""
    from .generate import sample_next

    if 4 * n_notes + 1 > model.config.block_size:
        raise ValueError(f"{n_notes} notes need {4 * n_notes + 1} positions; the model has {model.config.block_size}")
    device = next(model.parameters()).device
    lows = list(EVENT_OFFSETS.values())
    highs = [128, 128 + 64, 128 + 128, EVENT_BOS]
    allowed = torch.zeros(4, EVENT_VOCAB_SIZE, dtype=torch.bool, device=device)
    for slot in range(4):
        allowed[slot, lows[slot] : highs[slot]] = True
    was_training = model.training
    model.eval()
    cache = model.new_cache(1, max_len=4 * n_notes + 1)
    token = torch.tensor([[EVENT_BOS]], device=device)
    out = []
    for i in range(4 * n_notes):
        logits = model(token, cache=cache)[:, -1].masked_fill(~allowed[i % 4], float("-inf"))
        token = sample_next(logits, temperature, top_k, None, generator)
        out.append(token)
    model.train(was_training)
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
        raise RuntimeError("MAESTRO is not in the offline mirror: unset TFS_OFFLINE to download it (58 MB)")
    return read_maestro_zip(fetch_file(MAESTRO.files[0], MAESTRO.name), split, max_files)


# --------------------------------------------------------------------------- listening and looking


def synthesize(notes: list[Note], sample_rate: int = 16000, tail: float = 0.5) -> np.ndarray:
    """A toy organ: each note a sum of three harmonics under an attack-decay-release envelope.
    Returns float32 samples in [-1, 1] to play with ``IPython.display.Audio(samples, rate=sample_rate)``."""
    if not notes:
        return np.zeros(int(tail * sample_rate), dtype=np.float32)
    length = int((max(n.end for n in notes) + tail) * sample_rate)
    out = np.zeros(length, dtype=np.float64)
    release = 0.08
    for n in notes:
        duration = n.end - n.start + release
        t = np.arange(int(duration * sample_rate)) / sample_rate
        freq = 440.0 * 2 ** ((n.pitch - 69) / 12)
        wave = sum(a * np.sin(2 * math.pi * k * freq * t) for k, a in ((1, 1.0), (2, 0.4), (3, 0.2)))
        envelope = np.minimum(1.0, t / 0.01) * np.exp(-1.5 * t)  # 10 ms attack, gentle decay
        envelope *= np.clip((duration - t) / release, 0.0, 1.0)  # release after the note ends
        i = int(n.start * sample_rate)
        out[i : i + len(t)] += (n.velocity / 127) * wave * envelope
    return (0.9 * out / max(1e-9, np.abs(out).max())).astype(np.float32)


def plot_piano_roll(steps: torch.Tensor, ax=None, title: str | None = None, split_at: int | None = None):
    """A chorale (T, 4) as a piano roll: one colour per voice; ``split_at`` draws a line at a step
    (e.g. where a prompt ends and the model's continuation begins)."""
    import matplotlib.pyplot as plt

    steps = torch.as_tensor(steps)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2.6))
    names = ("soprano", "alto", "tenor", "bass")
    for v in range(VOICES):
        t = torch.nonzero(steps[:, v] >= 0).squeeze(1)
        ax.scatter(t, steps[t, v], marker="s", s=6, color=f"C{v}", label=names[v], linewidths=0)
    if split_at is not None:
        ax.axvline(split_at - 0.5, color="k", ls="--", lw=1)
    for bar in range(0, len(steps), 16):
        ax.axvline(bar - 0.5, color="0.85", lw=0.5, zorder=0)
    ax.set_xlabel("16th-note step")
    ax.set_ylabel("MIDI pitch")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper right", markerscale=2)
    return ax
