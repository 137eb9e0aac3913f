"""Text for language modelling: a character tokenizer, byte-pair encoding built by hand, and the
batches a language model trains on.

* :class:`CharTokenizer` - one id per character seen in training (65 for Tiny Shakespeare).
* :class:`BPETokenizer` - byte-level byte-pair encoding (as GPT-2): start from the 256 byte values
  and repeatedly merge the most frequent adjacent pair into a new token. Any text round-trips,
  even characters never seen in training, because every character is some sequence of bytes.
* :func:`split_train_val`, :func:`lm_batches`, :func:`lm_eval_batches` - nanoGPT's split (first
  90% for training) and random windows ``(x, y)`` where ``y`` is ``x`` shifted by one token.
"""

from __future__ import annotations

import heapq
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F

from .config import mixed_precision
from .model import evaluating

# --------------------------------------------------------------------------- characters


class CharTokenizer:
    """Characters <-> ids, one id per distinct character, in sorted order (as nanoGPT's char model)."""

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        """The vocabulary is every character of ``text``."""
        if not text:
            raise ValueError("CharTokenizer.train needs a non-empty text to take its characters from")
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            raise ValueError(
                f"characters {unknown!r} are not in this tokenizer's vocabulary of {self.vocab_size} characters; "
                "a character tokenizer knows only the characters of its training text "
                "(train it on text that contains them, or use a byte-level BPETokenizer)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


# --------------------------------------------------------------------------- byte-pair encoding

# GPT-2's pre-tokenizer, written for Python's `re`: contractions, words with their leading space,
# numbers, runs of punctuation, whitespace. Merges never cross these chunks, so a token never
# glues the end of one word to the start of the next. Every character matches some alternative.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d+| ?(?:[^\w\s]|_)+|\s+(?!\S)|\s+"""


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` (left to right, no overlaps) by ``new_id``."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def pre_tokenize(text: str, pattern: str = SPLIT_PATTERN) -> list[str]:
    """Cut text into the chunks that merges stay inside: ``"Hello, world"`` -> ``["Hello", ",", " world"]``."""
    return re.findall(pattern, text)


class BPETokenizer:
    """Byte-level byte-pair encoding.

    Ids 0-255 are the bytes of the UTF-8 text; id ``256 + r`` is the ``r``-th merge, the pair of
    tokens ``merges[r]`` fused into one. Encoding applies the merges in the order they were
    learned; decoding concatenates each token's bytes.
    """

    def __init__(self, merges: Sequence[tuple[int, int]], pattern: str = SPLIT_PATTERN):
        self.merges = [tuple(map(int, m)) for m in merges]
        self.pattern = pattern
        self.ranks = {pair: 256 + r for r, pair in enumerate(self.merges)}  # pair -> its new id
        self.vocab = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
        for a, b in self.merges:
            if a >= len(self.vocab) or b >= len(self.vocab):
                raise ValueError(f"merge {(a, b)} uses a token that no earlier merge created")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = SPLIT_PATTERN) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text``.

        Chunks are counted once (``" the"`` appears 4,888 times in Tiny Shakespeare's training split
        but is one entry with that count); each merge updates the pair counts of only the chunks that contain
        the merged pair. The most frequent pair wins, ties going to the smallest pair of ids (as in
        the Hugging Face ``tokenizers`` trainer).
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size={vocab_size}: a byte-level BPE needs at least the 256 byte values")
        chunks = Counter(pre_tokenize(text, pattern))
        words = [list(chunk.encode("utf-8")) for chunk in chunks]
        counts = list(chunks.values())

        pair_count: Counter = Counter()  # pair -> occurrences in the text
        where = defaultdict(set)  # pair -> indices of the words that contain it
        for w, (ids, n) in enumerate(zip(words, counts, strict=True)):
            for pair in pairwise(ids):
                pair_count[pair] += n
                where[pair].add(w)
        heap = [(-n, pair) for pair, n in pair_count.items()]
        heapq.heapify(heap)

        merges = []
        while len(merges) < vocab_size - 256 and heap:
            neg, pair = heapq.heappop(heap)
            if pair_count.get(pair, 0) != -neg:
                continue  # stale entry: the count changed and a fresh entry was pushed
            new_id = 256 + len(merges)
            merges.append(pair)
            touched = set()
            for w in where.pop(pair):
                ids, n = words[w], counts[w]
                for p in pairwise(ids):  # take the word's pairs out ...
                    pair_count[p] -= n
                    touched.add(p)
                ids = words[w] = merge_pair(ids, pair, new_id)
                for p in pairwise(ids):  # ... and put the merged word's pairs back
                    pair_count[p] += n
                    where[p].add(w)
                    touched.add(p)
            for p in touched:
                if pair_count[p] > 0:
                    heapq.heappush(heap, (-pair_count[p], p))
                else:
                    del pair_count[p]
        return cls(merges, pattern)

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) > 1:
            # The pair that was merged earliest in training is applied first.
            pair = min(pairwise(ids), key=lambda p: self.ranks.get(p, math.inf))
            if pair not in self.ranks:
                break
            ids = merge_pair(ids, pair, self.ranks[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        out = []
        for chunk in pre_tokenize(text, self.pattern):
            ids = self._cache.get(chunk)
            if ids is None:
                ids = self._cache[chunk] = self._encode_chunk(chunk)
            out.extend(ids)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        # A sampled sequence may cut a multi-byte character in two: show U+FFFD rather than fail.
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        """A token as readable text, e.g. ``' the'``."""
        return self.vocab[i].decode("utf-8", errors="replace")


def hf_bpe_merges(text: str, vocab_size: int, pattern: str = SPLIT_PATTERN) -> list[tuple[int, int]]:
    """Train the Hugging Face ``tokenizers`` BPE trainer on the same chunks and return its merges
    as pairs of our ids, for comparison with :meth:`BPETokenizer.train`.

    Each chunk's bytes are passed as Latin-1 characters (byte ``b`` -> ``chr(b)``), so that the
    trainer's alphabet, sorted by character, gives byte ``b`` the id ``b`` as ours does.
    """
    from tokenizers import Tokenizer, models, trainers

    chunks = [c.encode("utf-8").decode("latin-1") for c in pre_tokenize(text, pattern)]
    tokenizer = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=[chr(b) for b in range(256)], show_progress=False, min_frequency=0
    )
    tokenizer.train_from_iterator(chunks, trainer)
    vocab = tokenizer.get_vocab()
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in merges]
    return [(vocab[a], vocab[b]) for a, b in merges]


# --------------------------------------------------------------------------- language-model batches


def split_train_val(ids: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's split: the first ``train_fraction`` of the sequence trains, the rest validates."""
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


def lm_batches(data: torch.Tensor, block_size: int, batch_size: int, seed: int = 0):
    """A callable ``step -> (x, y)``: ``batch_size`` random windows of ``data`` (1-d ids), each
    ``x`` (B, T) and ``y`` (B, T) the same window shifted one token on (the next-token targets)."""
    if len(data) <= block_size:
        raise ValueError(f"the data has {len(data)} tokens; it needs more than block_size={block_size}")
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(block_size + 1)

    def get_batch(_step=None):
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        window = data[starts[:, None] + offsets]  # (B, T + 1)
        return window[:, :-1], window[:, 1:]

    return get_batch


def lm_eval_batches(data: torch.Tensor, block_size: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole of ``data`` cut into consecutive windows of ``block_size`` (the ragged end dropped),
    in batches: every token is predicted once, so the mean loss is exact and does not vary between runs."""
    n = (len(data) - 1) // block_size
    x = data[: n * block_size].view(n, block_size)
    y = data[1 : n * block_size + 1].view(n, block_size)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def evaluate_lm(model, data: torch.Tensor, block_size: int, batch_size: int = 64, autocast_dtype="auto") -> float:
    """Mean next-token loss (nats per token) over all of ``data``, every token predicted once
    (windows of ``block_size``, so each prediction sees 0 to ``block_size - 1`` tokens of context). ``data`` may
    live anywhere: each batch is moved to the model's device. ``autocast_dtype``: as :func:`helpers.fit`'s
    (``"auto"``: the hardware's mixed precision, float32 on the CPU; ``None``: float32)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with evaluating(model):
        for x, y in lm_eval_batches(data, block_size, batch_size):
            x, y = x.to(device), y.to(device)
            with mixed_precision(device, autocast_dtype):
                logits = model(x)
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count


def per_char_loss(loss_per_token: float, n_tokens: int, n_chars: int) -> float:
    """Convert a mean loss per token (nats) to per character, so tokenizers compare: a text of
    ``n_chars`` characters costs ``loss_per_token * n_tokens`` nats in all."""
    return loss_per_token * n_tokens / n_chars
