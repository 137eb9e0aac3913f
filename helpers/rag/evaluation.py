"""Measuring retrieval and answers: the hit rate at k of every retrieval method on questions with the pages
that answer them, and how often an answer states the asked fact, cites a right page and stays short.
"""

from __future__ import annotations

import statistics
import time

import torch

from .answers import answer
from .questions import ATTENTION, Question, states_fact
from .retrieval import METHODS, DocumentIndex, _check_question, reciprocal_rank_fusion

# --------------------------------------------------------------------------- retrieval

# The 30 development questions on "Attention Is All You Need" (the arXiv v5 PDF), each with the page(s) that state the
# answer (helpers/rag/questions.py holds them with their facts, and the questions on BERT).
PAPER_QUESTIONS: list[tuple[str, tuple[int, ...]]] = [(q.question, q.pages) for q in ATTENTION]


def retrieved_pages(index: DocumentIndex, questions: list[str], k: int = 3) -> dict[str, torch.Tensor]:
    """The pages of every question's top ``k`` chunks under each method: ``{method: (Q, k)}``.
    The same rankings as :meth:`DocumentIndex.search`, each question embedded once for all methods
    (and alone, as search does: padding in a batch can flip near-ties)."""
    k = min(k, len(index))
    vectors = torch.cat([index.embedder.encode([_check_question(q)]) for q in questions])  # (Q, D)
    dense_all = vectors @ index.embeddings.T  # (Q, N)
    chunk_pages = torch.tensor([c.page for c in index.chunks])  # (N,)
    out = {m: [] for m in METHODS}
    for question, dense in zip(questions, dense_all, strict=True):
        lexical = index.bm25.scores(question)
        for method, scores in zip(METHODS, (dense, lexical, reciprocal_rank_fusion(dense, lexical)), strict=True):
            out[method].append(chunk_pages[scores.topk(k).indices])
    return {m: torch.stack(rows) for m, rows in out.items()}


def hit_rates(index: DocumentIndex, questions: list[tuple[str, tuple[int, ...]]],
              ks=(1, 3)) -> dict[str, dict[int, float]]:
    """Hit rate at k: the fraction of questions whose top ``k`` chunks include one from a page that
    holds the answer. ``questions`` are (question, answer pages) pairs; returns ``{method: {k: rate}}``."""
    top = retrieved_pages(index, [q for q, _ in questions], max(ks))
    out = {}
    for method, pages in top.items():
        found = torch.tensor([[p in answer for p in row] for row, (_, answer) in zip(pages.tolist(), questions,
                                                                                  strict=True)])  # (Q, K)
        out[method] = {k: found[:, :k].any(1).float().mean().item() for k in ks}
    return out


# --------------------------------------------------------------------------- answers

MAX_WORDS = 80


def judge(answer, question: Question, max_words: int = MAX_WORDS) -> dict:
    """One answer against its question: ``fact`` (every key term of the fact is in the answer's text, after
    normalisation: :func:`helpers.rag.questions.states_fact`), ``page`` (a page the answer cites holds the
    fact), ``words`` (whitespace-separated words of the answer's text, its label included) and ``ok``: all
    three, with fewer than ``max_words`` words."""
    words = len(answer.text.split())
    fact = states_fact(answer.text, question.fact)
    page = bool(set(answer.pages) & set(question.pages))
    return dict(fact=fact, page=page, words=words, ok=fact and page and words < max_words)


def answer_scores(judged: list[dict]) -> dict:
    """The summary of :func:`judge` verdicts: the share ``ok`` (states the fact, cites a right page, under
    80 words), the shares of each criterion, the median length in words, and the number of answers."""
    n = len(judged)
    return dict(ok=sum(j["ok"] for j in judged) / n, fact=sum(j["fact"] for j in judged) / n,
                page=sum(j["page"] for j in judged) / n, median_words=statistics.median(j["words"] for j in judged),
                n=n)


class _Timed:
    """A generator wrapped to note when its first piece of text arrives."""

    def __init__(self, generator):
        self.generator, self.first = generator, None

    def stream(self, messages):
        for piece in self.generator.stream(messages):
            if self.first is None:
                self.first = time.perf_counter()
            yield piece


def timed_answer(index: DocumentIndex, question: str, generator=None, **answer_kwargs):
    """``(answer, seconds to the first streamed piece, seconds to the whole answer)``, both counted from the
    call (retrieval, sentence selection and the prompt's prefill included). The first is None for an answer
    that no generator wrote (extractive). ``generator``: the local model when None and the mode is local."""
    mode = answer_kwargs.get("mode")
    if generator is None and mode == "local":
        from .local import local_model

        generator = local_model()
    timed = _Timed(generator) if generator is not None else None
    start = time.perf_counter()
    result = answer(index, question, generator=timed, **answer_kwargs)
    total = time.perf_counter() - start
    first = timed.first - start if timed is not None and timed.first is not None else None
    return result, first, total


def evaluate_answers(indexes: dict, questions: list[Question], **answer_kwargs) -> list[dict]:
    """Answer every question (on ``indexes[question.paper]``) and :func:`judge` it; each row also holds the
    answer, the question, and the seconds to the first piece and to the whole answer."""
    rows = []
    for q in questions:
        result, first, total = timed_answer(indexes[q.paper], q.question, **answer_kwargs)
        rows.append(dict(judge(result, q), first_s=first, total_s=total, answer=result, question=q))
    return rows


def chunk_ranks(index: DocumentIndex, questions: list[Question]) -> dict[str, list[int | None]]:
    """For each method, each question's rank (1 = first) of its first *relevant chunk*: a chunk on a page that
    holds the answer and whose text states the fact (:func:`states_fact`); None when no chunk is relevant.
    About 7 chunks share a page, so a page hit can be a chunk that does not hold the fact."""
    out = {m: [] for m in METHODS}
    for q in questions:
        relevant = torch.tensor([c.page in q.pages and states_fact(c.text, q.fact) for c in index.chunks])  # (N,)
        for method in METHODS:
            order = index.scores(q.question, method).argsort(descending=True)  # (N,) best first
            where = relevant[order].nonzero().flatten()
            out[method].append(int(where[0]) + 1 if len(where) else None)
    return out


def chunk_metrics(index: DocumentIndex, questions: list[Question], ks=(1, 3)) -> dict[str, dict[str, float]]:
    """Chunk-level retrieval: ``recall@k``, the share of questions with a relevant chunk (see
    :func:`chunk_ranks`) among the top k, and ``mrr``, the mean of 1 / that chunk's rank (0 when none)."""
    ranks = chunk_ranks(index, questions)
    return {m: {**{f"recall@{k}": sum(r is not None and r <= k for r in rs) / len(rs) for k in ks},
                "mrr": sum(1 / r for r in rs if r is not None) / len(rs)} for m, rs in ranks.items()}
