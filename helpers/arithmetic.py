"""Arithmetic as sequence modelling: problems, three ways of writing them down, a model, and
an API to ask a trained model for answers.

A problem ``a + b`` (or ``a * b``) becomes a string of tokens, ``prompt`` then ``answer``:

============  ======================  =================================================
writing       ``123 + 45``            what the model sees
============  ======================  =================================================
``plain``     ``123+45=`` ``168;``    most significant digit first; learned positions
``reversed``  ``123+45=`` ``861;``    the answer written units first
``abacus``    ``321+54=`` ``861;``    every number units first, plus an embedding of each
                                      digit's place value (units 1, tens 2, hundreds 3...)
============  ======================  =================================================

``;`` ends the answer. With ``zero_pad`` both operands are written with ``max_digits`` digits
(``00123+00045=``), so that with learned absolute positions the digits of one place always sit at the
same positions. The model (:class:`ArithmeticModel`) is the shared :class:`~helpers.model.GPT`
fed with float input embeddings: token embedding, plus, for ``abacus``, a place-value embedding
("Abacus embeddings", McLeish et al. 2024) that replaces the learned absolute positions.

>>> model = helpers.load_checkpoint("04_arithmetic")
>>> solve(model, "12345+67890")
'80235'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .generate import generate
from .model import GPT, transformer_config

VOCAB = "0123456789+*=;."  # digits, operators, '=', ';' ends the answer, '.' pads
STOI = {c: i for i, c in enumerate(VOCAB)}
PAD, END = STOI["."], STOI[";"]
REPRESENTATIONS = ("plain", "reversed", "abacus")
OPS = {"+": lambda a, b: a + b, "*": lambda a, b: a * b}
_LOOKUP = np.zeros(256, dtype=np.int64)
_LOOKUP[np.frombuffer(VOCAB.encode(), dtype=np.uint8)] = np.arange(len(VOCAB))


# --------------------------------------------------------------------------- writing problems down


def answer_digits(op: str, max_digits: int) -> int:
    """The longest answer: n + 1 digits for a sum of n-digit numbers, 2n for a product."""
    return max_digits + 1 if op == "+" else 2 * max_digits


def answer_length(op: str, max_digits: int, scratchpad: bool = False) -> int:
    """Tokens after the prompt in the longest problem, the final ';' included."""
    n = answer_digits(op, max_digits) + 1
    if scratchpad:  # partial products a * b_j * 10^j of up to max_digits + 1 + j digits, '+'s, '='
        n += sum(max_digits + 1 + j for j in range(max_digits)) + max_digits
    return n


def sequence_length(op: str, max_digits: int, scratchpad: bool = False) -> int:
    """Tokens in the longest problem: ``a op b = answer ;``."""
    return 2 * max_digits + 2 + answer_length(op, max_digits, scratchpad)


def format_problem(a: int, op: str, b: int, representation: str, scratchpad: bool = False,
                   width: int | None = None) -> tuple[str, str]:
    """``(123, "+", 45, "abacus")`` -> ``("321+54=", "861;")``: the prompt and the answer to learn.

    With ``scratchpad`` (multiplication) the answer first lists the partial products, one per digit
    of ``b`` as in long multiplication, then their sum: ``(12, "*", 34, "abacus")`` ->
    ``("21*43=", "84+063=804;")``, for 12 * 4 = 48 and 12 * 30 = 360, written units first.

    With ``width`` both operands are written with that many digits, leading zeros added:
    ``(123, "+", 45, "reversed", width=5)`` -> ``("00123+00045=", "861;")``, so that the digits of
    one place always sit at the same positions of the prompt.
    """
    x, y, z = str(a), str(b), str(OPS[op](a, b))
    if width is not None:
        if max(len(x), len(y)) > width:
            raise ValueError(f"{a}{op}{b} has a number longer than width={width} digits")
        x, y = x.zfill(width), y.zfill(width)
    flip = (lambda t: t[::-1]) if representation in ("reversed", "abacus") else (lambda t: t)
    if scratchpad:
        if op != "*":
            raise ValueError("a scratchpad of partial products is for multiplication ('*')")
        partials = [str(a * int(digit)) + "0" * j for j, digit in enumerate(reversed(y))]
        z = "+".join(flip(p) for p in partials) + "=" + flip(z)
    else:
        z = flip(z)
    if representation == "abacus":
        x, y = x[::-1], y[::-1]
    return f"{x}{op}{y}=", f"{z};"


def encode(rows: list[str], length: int | None = None) -> torch.Tensor:
    """Strings -> ids (N, T), padded on the right with '.' to ``length`` (default: the longest)."""
    length = length or max(map(len, rows))
    text = "".join(r.ljust(length, ".") for r in rows).encode()
    return torch.from_numpy(_LOOKUP[np.frombuffer(text, dtype=np.uint8)].reshape(len(rows), length))


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def count_carries(a, b) -> torch.Tensor:
    """Carries in the column addition of ``a + b`` (tensors or ints), e.g. 3 for 999 + 1."""
    a, b = torch.as_tensor(a, dtype=torch.long), torch.as_tensor(b, dtype=torch.long)
    carry, total = torch.zeros_like(a), torch.zeros_like(a)
    while bool((a > 0).any() or (b > 0).any() or (carry > 0).any()):
        carry = ((a % 10 + b % 10 + carry) >= 10).long()
        total += carry
        a, b = a // 10, b // 10
    return total


# --------------------------------------------------------------------------- problem sets

_KEY = 10**9  # (a, b) -> a * 10^9 + b identifies a problem (numbers of up to 9 digits)


def _keys(problems: torch.Tensor) -> torch.Tensor:
    return problems[:, 0] * _KEY + problems[:, 1]


SAMPLINGS = ("by_length", "uniform", "exact")


def sample_numbers(n: int, max_digits: int, generator: torch.Generator, sampling: str = "by_length") -> torch.Tensor:
    """(n,) random numbers of up to ``max_digits`` digits.

    * ``"by_length"``: the count of digits uniform in 1..max_digits, then uniform among the numbers of
      that length, so 7 is as likely as 52,918 is; short numbers are not drowned by long ones.
    * ``"uniform"``: uniform in 0..10^max_digits - 1 (for small spaces such as 2-digit multiplication,
      where "by_length" would put most one-digit problems into a test set of 2,000).
    * ``"exact"``: exactly ``max_digits`` digits.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r}; use one of {SAMPLINGS}")
    if sampling == "uniform":
        return torch.randint(0, 10**max_digits, (n,), generator=generator)
    if sampling == "exact":
        digits = torch.full((n,), max_digits)
    else:
        digits = torch.randint(1, max_digits + 1, (n,), generator=generator)
    high = 10 ** digits.double()
    low = torch.where(digits == 1, 0.0, high / 10)
    return (low + torch.rand(n, generator=generator, dtype=torch.float64) * (high - low)).long()


def make_problems(n: int, max_digits: int, *, seed: int = 0, sampling: str = "by_length",
                  exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` distinct problems ``(a, b)`` as a (n, 2) tensor, drawn as :func:`sample_numbers` says,
    none of them in ``exclude`` (m, 2)."""
    if not 1 <= max_digits <= 9:
        raise ValueError(f"max_digits={max_digits}: numbers of 1 to 9 digits are supported")
    space = (9 * 10 ** (max_digits - 1)) ** 2 if sampling == "exact" else 10 ** (2 * max_digits)
    if n > space // 2:
        raise ValueError(f"{n} distinct problems is too many: there are only {space} of this kind")
    generator = torch.Generator().manual_seed(seed)
    taken = _keys(exclude) if exclude is not None and len(exclude) else torch.empty(0, dtype=torch.long)
    found = torch.empty(0, 2, dtype=torch.long)
    while len(found) < n:
        cand = torch.stack([sample_numbers(2 * n, max_digits, generator, sampling) for _ in range(2)], dim=1)
        cand = cand[~torch.isin(_keys(cand), taken)]
        found = torch.cat([found, cand])
        _, first = np.unique(_keys(found).numpy(), return_index=True)
        found = found[np.sort(first)]  # distinct, in the order drawn
    return found[:n]


def held_out_problems(n_test: int, n_val: int, max_digits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Notebook 04's held-out problems, never trained on: ``test`` (n_test, 2) of 1 to ``max_digits`` digits,
    ``test_full`` (n_test, 2) of exactly ``max_digits`` digits, and ``val`` (n_val, 2), the problems that
    model selection reads; the three are disjoint."""
    test = make_problems(n_test, max_digits, seed=1)
    test_full = make_problems(n_test, max_digits, seed=2, sampling="exact", exclude=test)
    val = make_problems(n_val, max_digits, seed=4, exclude=torch.cat([test, test_full]))
    return test, test_full, val


def training_batches(config: ArithmeticConfig, batch_size: int, exclude: torch.Tensor | None = None, seed: int = 0):
    """A callable ``step -> (x, y)``: fresh random problems every step, never one of ``exclude``
    (the held-out test problems). ``y`` is ``x`` shifted by one, with -100 (ignored by the loss)
    everywhere but the answer: the model learns to answer, not to predict the random question."""
    generator = torch.Generator().manual_seed(seed)
    taken = _keys(exclude) if exclude is not None and len(exclude) else torch.empty(0, dtype=torch.long)

    def get_batch(_step=None):
        problems = torch.empty(0, 2, dtype=torch.long)
        while len(problems) < batch_size:
            cand = torch.stack([sample_numbers(batch_size * 5 // 4, config.max_digits, generator, config.sampling)
                                for _ in range(2)], dim=1)
            problems = torch.cat([problems, cand[~torch.isin(_keys(cand), taken)]])
        return problem_batch(config, problems[:batch_size])

    return get_batch


def problem_batch(config: ArithmeticConfig, problems) -> tuple[torch.Tensor, torch.Tensor]:
    """Problems ``(a, b)`` (N, 2) -> ``(x, y)``, each (N, L - 1), written as ``config`` says: ``y`` is ``x``
    shifted by one, -100 everywhere but the answer and its ``;``. A training batch, or a fixed validation one."""
    length = sequence_length(config.op, config.max_digits, config.scratchpad)
    width = config.max_digits if config.zero_pad else None
    prompts, answers = zip(*(format_problem(a, config.op, b, config.representation, config.scratchpad, width)
                             for a, b in torch.as_tensor(problems).tolist()), strict=True)
    seq = encode([p + q for p, q in zip(prompts, answers, strict=True)], length)  # (N, L)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    prompt_len = torch.tensor([len(p) for p in prompts])
    position = torch.arange(y.size(1))
    y[(position[None, :] < prompt_len[:, None] - 1) | (y == PAD)] = -100  # learn only the answer
    return x, y


# --------------------------------------------------------------------------- the model


@dataclass
class ArithmeticConfig:
    representation: str = "abacus"  # "plain", "reversed" or "abacus"
    op: str = "+"  # the operator the model learns: "+" or "*"
    max_digits: int = 5  # the longest numbers it is trained on
    sampling: str = "by_length"  # how training numbers are drawn: "by_length" or "uniform" (see sample_numbers)
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 48  # longest sequence (also the learned positions of plain/reversed)
    max_place: int = 24  # abacus: embeddings for place values 1..max_place
    random_offset: bool = True  # abacus: shift place values at random in training (see place_values)
    absolute_positions: bool | None = None  # learned positions; default: on for plain/reversed, off for abacus
    number_embedding: bool = False  # also embed which number a token belongs to (first, second, answer...)
    scratchpad: bool = False  # multiplication: write the partial products before the answer
    zero_pad: bool = False  # write both operands with max_digits digits, leading zeros added (format_problem)
    dropout: float = 0.0

    def __post_init__(self):
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation={self.representation!r}; use one of {REPRESENTATIONS}")
        if self.sampling not in ("by_length", "uniform"):
            raise ValueError(f"sampling={self.sampling!r}; train with 'by_length' or 'uniform'")
        if self.op not in OPS:
            raise ValueError(f"op={self.op!r}; use one of {tuple(OPS)}")
        if self.scratchpad and self.op != "*":
            raise ValueError("scratchpad=True is for multiplication (op='*')")
        if sequence_length(self.op, self.max_digits, self.scratchpad) > self.block_size:
            raise ValueError(f"block_size={self.block_size} is shorter than a {self.max_digits}-digit problem")
        if answer_digits(self.op, self.max_digits) > self.max_place:
            raise ValueError(f"max_place={self.max_place} is smaller than the longest answer")
        if self.absolute_positions is None:
            self.absolute_positions = self.representation != "abacus"
        if self.representation != "abacus" and not self.absolute_positions:
            raise ValueError("plain and reversed writings need absolute_positions=True: nothing else says where a digit is")


def number_index(ids: torch.Tensor, max_index: int = 2) -> torch.Tensor:
    """(B, T) ids -> (B, T): which number each token belongs to, 0 (first), 1 (second), 2 (the next:
    the answer, or the first partial product)... up to ``max_index``, counting the separators before
    it (a separator belongs to the number it closes)."""
    other = (ids >= 10).long()
    return (other.cumsum(dim=1) - other).clamp(max=max_index)


def place_values(ids: torch.Tensor) -> torch.Tensor:
    """(B, T) ids -> (B, T): each digit's position inside its number (1 for the first digit
    written, 2 for the next...), 0 for other tokens. Numbers are written units first, so 1 means
    units, 2 tens, and digits of the same place share a value whatever their position."""
    is_digit = ids < 10
    pos = torch.arange(ids.size(1), device=ids.device).expand_as(ids)
    last_other = torch.where(is_digit, -1, pos).cummax(dim=1).values  # latest non-digit at or before t
    return torch.where(is_digit, pos - last_other, 0)


class ArithmeticModel(nn.Module):
    """Token embedding (+ place-value embedding for ``abacus``) -> the shared GPT -> next-token logits.

    For ``plain`` and ``reversed`` the GPT adds its learned absolute positions; for ``abacus`` those
    are switched off (zero and frozen): the place values say all the model needs about position.
    With ``number_embedding`` a third embedding says which number a token belongs to (the first
    operand, the second, the answer), which multiplication needs: a product digit sums products of
    a digit of the first number with a digit of the second, and nothing else tells them apart.
    """

    def __init__(self, config: ArithmeticConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(len(VOCAB), config.n_embd)
        self.abacus = config.representation == "abacus"
        self.wplace = nn.Embedding(config.max_place + 1, config.n_embd) if self.abacus else None
        self.n_numbers = 3 + (config.max_digits + 1 if config.scratchpad else 0)  # operands, partials, sum, pads
        self.wnum = nn.Embedding(self.n_numbers, config.n_embd) if config.number_embedding else None
        self.gpt = GPT(transformer_config(config, vocab_size=None, n_out=len(VOCAB)))
        for emb in (self.wte, self.wplace, self.wnum):
            if emb is not None:
                nn.init.normal_(emb.weight, 0.0, 0.02)
        if not config.absolute_positions:
            nn.init.zeros_(self.gpt.wpe.weight)
            self.gpt.wpe.weight.requires_grad_(False)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) input embeddings."""
        h = self.wte(ids)
        if self.abacus:
            place = place_values(ids)
            trained = answer_digits(self.config.op, self.config.max_digits)
            if self.training and self.config.random_offset and self.config.max_place > trained:
                # One random shift per sequence, so that the embeddings of places beyond the
                # training lengths are trained too: what makes longer numbers work.
                shift = torch.randint(0, self.config.max_place - trained + 1, (ids.size(0), 1), device=ids.device)
                place = torch.where(place > 0, place + shift, 0)
            h = h + self.wplace(place.clamp(max=self.config.max_place))
        if self.wnum is not None:
            h = h + self.wnum(number_index(ids, self.n_numbers - 1))
        return h

    def forward(self, ids: torch.Tensor, cache=None) -> torch.Tensor:
        """(B, T) ids -> (B, T, vocab) logits."""
        if cache is not None:
            raise ValueError("ArithmeticModel re-reads the whole (short) sequence: generate with use_cache=False")
        return self.gpt(self.embed(ids))


# --------------------------------------------------------------------------- asking the model

_PROBLEM = re.compile(r"^\s*(\d+)\s*([+*])\s*(\d+)\s*=?\s*$")


def parse_problem(text: str, config: ArithmeticConfig | None = None) -> tuple[int, str, int]:
    """``"12345+67890"`` -> ``(12345, "+", 67890)``; a clear ``ValueError`` for anything else."""
    accepted = "two whole numbers and an operator, such as '12345+67890'"
    if config is not None:
        accepted = (f"two whole numbers of 1 to {config.max_digits} digits joined by {config.op!r}, "
                    f"such as '{'1' * config.max_digits}{config.op}{'2' * config.max_digits}'")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty problem: this model accepts {accepted}")
    match = _PROBLEM.match(text)
    if match is None:
        raise ValueError(f"cannot read {text!r} as a problem: this model accepts {accepted}")
    x, op, y = match.groups()
    if config is not None:
        if op != config.op:
            raise ValueError(f"{text!r}: this model was trained on {config.op!r} only; it accepts {accepted}")
        if max(len(x.lstrip("0") or "0"), len(y.lstrip("0") or "0")) > config.max_digits:
            raise ValueError(f"{text!r} has numbers longer than the model was trained on: it accepts {accepted}")
    return int(x), op, int(y)


@torch.no_grad()
def predict(model: ArithmeticModel, problems, max_digits: int | None = None) -> list[str]:
    """The model's answers (plain decimal strings) to problems ``(a, b)`` (a (N, 2) tensor or pairs),
    by greedy decoding. Problems are grouped by prompt length, so every row of a batch is exact.

    ``max_digits`` allows numbers longer than the model was trained on (to test length generalisation).
    """
    cfg = model.config
    problems = torch.as_tensor(problems, dtype=torch.long).reshape(-1, 2)
    max_digits = max_digits or cfg.max_digits
    if len(str(int(problems.max()))) > max_digits:
        raise ValueError(f"problems have numbers longer than {max_digits} digits")
    n_new = answer_length(cfg.op, max_digits, cfg.scratchpad)
    width = max_digits if cfg.zero_pad else None
    prompts = [format_problem(a, cfg.op, b, cfg.representation, cfg.scratchpad, width)[0]
               for a, b in problems.tolist()]
    if max(map(len, prompts)) + n_new > cfg.block_size:
        raise ValueError(f"problems of {max_digits} digits do not fit block_size={cfg.block_size}")
    device = next(model.parameters()).device
    answers = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for rows in by_length.values():
        ids = encode([prompts[i] for i in rows]).to(device)  # (G, L)
        out = generate(model, ids, n_new, temperature=0, use_cache=False)[:, ids.size(1):]
        for i, row in zip(rows, out.tolist(), strict=True):
            text = decode(row).split(";")[0].split("=")[-1]  # after the scratchpad, if any
            answers[i] = text[::-1] if cfg.representation in ("reversed", "abacus") else text
    return answers


def solve(model: ArithmeticModel, problem: str) -> str:
    """``solve(model, "12345+67890")`` -> ``"80235"``: the model's answer as a plain decimal string,
    whatever the writing it uses inside. Raises ``ValueError`` for input the model cannot take."""
    a, _, b = parse_problem(problem, model.config)
    return predict(model, [(a, b)])[0]


def _as_pairs(model, problems) -> torch.Tensor:
    if isinstance(problems, torch.Tensor):
        return problems.reshape(-1, 2).long()
    pairs = []
    for p in problems:
        if isinstance(p, str):
            a, _, b = parse_problem(p, None)
            if _ != model.config.op:
                raise ValueError(f"{p!r}: this model was trained on {model.config.op!r} only")
            pairs.append((a, b))
        else:
            pairs.append(tuple(p))
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def correct(model: ArithmeticModel, problems, max_digits: int | None = None) -> torch.Tensor:
    """(N,) bool: which problems the model answers exactly right."""
    pairs = _as_pairs(model, problems)
    truth = [str(OPS[model.config.op](a, b)) for a, b in pairs.tolist()]
    answers = predict(model, pairs, max_digits)
    return torch.tensor([x == t for x, t in zip(answers, truth, strict=True)])


def evaluate(model: ArithmeticModel, problems, max_digits: int | None = None) -> float:
    """Exact-match accuracy on ``problems``: (N, 2) pairs ``(a, b)``, or strings like ``"12+34"``."""
    return correct(model, problems, max_digits).float().mean().item()
