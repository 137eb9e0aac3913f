"""Attribution and grounding by the system, not by trust: which of the passages a generator was given support
its answer, and whether the answer's numbers and key terms appear in any of them.

A small model copies numbers wrongly, invents names and writes any page number it likes. So the pages an
answer cites are computed here from the passages that hold the answer's numbers and rare words, whatever the
model wrote, and an answer with a number or too many key terms that no passage holds is flagged as ungrounded.
A number counts as grounded only where a passage holds it *in the same context*: at least one of the words
next to it in the answer (its unit, the noun it counts) is also next to it in the passage. "The batch size was
3" is not grounded by a passage whose only "3" is in "3e-5", nor "2 parallel attention layers" by "Figure 2".
This catches invention and numbers moved from one context to another, not every misreading: a wrong number
that a passage holds beside the same words (the big model's dropout given for the base model's) passes.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field

from .retrieval import Hit, bm25_tokens

# Words any answer may use without a passage to back them (bm25_tokens forms: lower case, plural 's' gone).
GENERIC = frozenset(
    "also answer approximately about around called document each excerpt excerpts given here information "
    "mentioned not number one only paper same set show shown state stated such text total two three use used "
    "uses using value very well them".split()
)

# "p. 5", "pp. 5, 7", "pages 3 and 4", "p. 5-6": the pages are group 1 (also read by answers.cited_pages)
PAGES = r"(?:pp?\.|pages?)\s*(\d+(?:\s*(?:[-,–]|and)\s*\d+)*)"
_CITATION = re.compile(r"\s*[\[(]\s*" + PAGES + r"\s*[\])]", re.I)


def strip_citations(text: str) -> str:
    """The answer without the page citations its writer put in ('[p. 5]', '(pages 3, 4)')."""
    return re.sub(r"\s+([.,;:!?])", r"\1", _CITATION.sub("", text)).strip()


def numbers(text: str) -> set[str]:
    """The numbers of a text, as strings: '30,000' -> '30000', '0.1', '10' and '9' from '10^-9'."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    return {m.rstrip(".") for m in re.findall(r"\d+(?:\.\d+)?", text)}


_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def _context_tokens(text: str) -> list[str]:
    """Words and numbers in order, as the context check reads them: lower case, NFKC, no thousands separators,
    decimals whole ('0.1'), plural 's' stripped; stop words and generic words dropped, so that distances
    are counted in content words ('the launch code of the project is 7431': 'code' is 2 from '7431')."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    out = []
    for t in _TOKEN.findall(text):
        if not t[0].isdigit():
            t = bm25_tokens(t)
            t = t[0] if t and t[0] not in GENERIC and len(t[0]) > 1 else None
        if t:
            out.append(t)
    return out


def _neighbours(tokens: list, number: str, width: int) -> list[set[str]]:
    """For each place ``number`` stands in ``tokens``: the words within ``width`` positions of it."""
    return [{t for t in tokens[max(0, i - width):i + width + 1] if t and not t[0].isdigit()}
            for i, t in enumerate(tokens) if t == number]


def number_in_context(number: str, answer: str, passage: str, answer_width: int = 3,
                      passage_width: int = 5) -> bool:
    """Whether ``passage`` holds ``number`` beside at least one of the words that stand beside it in ``answer``
    (within ``answer_width`` positions there, ``passage_width`` in the passage). A number with no word near
    it in the answer only has to be in the passage."""
    where = _neighbours(_context_tokens(passage), number, passage_width)
    if not where:
        return False
    wanted = set().union(set(), *_neighbours(_context_tokens(answer), number, answer_width))
    return not wanted or any(wanted & found for found in where)


def key_terms(answer: str, question: str) -> list[str]:
    """The answer's content words that the question does not already hold (bm25_tokens forms, no numbers,
    no generic words): what the answer claims beyond the question."""
    asked = set(bm25_tokens(question))
    out = []
    for t in bm25_tokens(answer):
        if not t.isdigit() and len(t) > 2 and t not in asked and t not in GENERIC and t not in out:
            out.append(t)
    return out


@dataclass
class Grounding:
    """The verdict on one answer: supported or not, the pages that support it, and what no passage holds."""

    supported: bool
    pages: list[int]  # pages of the best-supporting passages (empty when nothing supports the answer)
    unsupported_numbers: list[str] = field(default_factory=list)
    unsupported_terms: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)  # the key terms checked

    def reason(self) -> str:
        """One line on why an answer is not grounded."""
        parts = []
        if self.unsupported_numbers:
            parts.append("numbers " + ", ".join(self.unsupported_numbers))
        if self.unsupported_terms:
            parts.append("terms " + ", ".join(self.unsupported_terms))
        where = " appear in no retrieved passage" + (" beside the same words" if self.unsupported_numbers else "")
        return "; ".join(parts) + where if parts else "nothing in it is supported"


def ground(answer: str, question: str, passages: list[Hit], max_unsupported: float = 0.5) -> Grounding:
    """Check an answer (its own citations stripped) against the passages its generator was given.

    * every number of the answer that is not in the question must appear in some passage beside one of the
      words that stand beside it in the answer (:func:`number_in_context`);
    * of its key terms (:func:`key_terms`), at most a share ``max_unsupported`` may appear in no passage;
    * its pages are those of the passages with the highest support: the sum, over the answer's numbers and
      key terms that a passage holds, of their weights (a number 3, a word the log of how rare it is among
      the passages, 1 + ln(P / passages holding it)). Ties cite every tied page.
    """
    answer = strip_citations(answer)
    passage_numbers = [numbers(p.text) for p in passages]
    passage_tokens = [set(bm25_tokens(p.text)) for p in passages]
    wanted_numbers = sorted(numbers(answer) - numbers(question))
    terms = key_terms(answer, question)
    held = [[n in found and number_in_context(n, answer, p.text) for n in wanted_numbers]
            for p, found in zip(passages, passage_numbers, strict=True)]  # (P, numbers)
    missing_numbers = [n for j, n in enumerate(wanted_numbers) if not any(row[j] for row in held)]
    missing_terms = [t for t in terms if not any(t in tokens for tokens in passage_tokens)]

    support = []
    for row, tokens in zip(held, passage_tokens, strict=True):
        score = 3.0 * sum(row)
        for t in terms:
            if t in tokens:
                holders = sum(t in other for other in passage_tokens)
                score += 1.0 + math.log(len(passages) / holders)
        support.append(score)
    best = max(support, default=0.0)
    pages = list(dict.fromkeys(p.page for p, s in zip(passages, support, strict=True) if s == best > 0))
    too_many = bool(terms) and len(missing_terms) > max_unsupported * len(terms)
    supported = not missing_numbers and not too_many and bool(pages)
    return Grounding(supported, pages, missing_numbers, missing_terms if too_many else [], terms)
