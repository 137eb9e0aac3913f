"""Bach chorales (JSB, the Coconet format) as one token sequence, the batches a GPT trains on, their
likelihood against two baselines, sampling new chorales, and a piano roll.

Each chorale is a grid ``(T, 4)`` of MIDI pitches, one row per 16th note, the four voices soprano, alto,
tenor and bass in columns, -1 for silence. We read it as a sentence by interleaving the voices::

    step 0: S A T B | step 1: S A T B | ...   ->   [BOS, S0, A0, T0, B0, S1, A1, T1, B1, ...]

Token ids are the MIDI pitches 0-127, then ``REST`` (128) and ``BOS`` (129): a 130-word vocabulary.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..config import mixed_precision
from ..data import DatasetInfo, RemoteFile, fetch_file, register
from ..generate import generate
from ..model import GPT, evaluating

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
                # the repository at a fixed commit, so the bytes never move under the checksum
                "https://raw.githubusercontent.com/czhuang/JSB-Chorales-dataset/9a7f733ddb4ed91f48da64ac7f0f621c34aadd4d/"
                "Jsb16thSeparated.json",
                "79294cc374f9252e95ef4b703161524c1c53dc1f712c236f00f1c1f5d54af5a7",
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


def chorale_nll(model: GPT, chorales: list[torch.Tensor], stride: int | None = None, batch_size: int = 32,
                autocast_dtype="auto") -> float:
    """Mean negative log-likelihood (nats) per token of whole chorales under ``model``.

    Each chorale is read as ``[BOS] + tokens``; chorales longer than the model's block are scored with
    sliding windows (``stride`` tokens apart, a multiple of 4), each token once, with at least
    ``block_size - stride`` tokens of context. NLL per 16th-note step is 4 times this. The chorales may be
    on the CPU; ``autocast_dtype`` as :func:`helpers.evaluate`'s (``"auto"``: the hardware's mixed precision).
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
    total = 0.0
    with evaluating(model), mixed_precision(device, autocast_dtype):
        for i in range(0, len(x), batch_size):
            logits = model(x[i : i + batch_size].to(device)).float()
            total += F.cross_entropy(logits.flatten(0, 1), y[i : i + batch_size].to(device).flatten(),
                                     ignore_index=-100, reduction="sum").item()
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

    Returns (T0 + n_steps, 4) pitches, on the CPU. Past the model's block the context is the last half block,
    cut at a step boundary so every position keeps the voice it was trained on. ``generator`` may be a CPU
    generator whatever the model's device (:func:`helpers.generate.sample_next`).
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
    # outside the axes, right of the roll: inside, it would hide the notes wherever it sat
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0, markerscale=2, frameon=False)
    return ax
