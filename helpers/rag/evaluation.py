"""Measuring retrieval: questions on "Attention Is All You Need" with the pages that answer them,
and the hit rate at k of every retrieval method.
"""

from __future__ import annotations

import torch

from .retrieval import METHODS, DocumentIndex, _check_question, reciprocal_rank_fusion

# --------------------------------------------------------------------------- evaluation

# Questions on "Attention Is All You Need" (the arXiv v5 PDF), each with the page(s) that state
# the answer, written by reading the extracted text page by page.
PAPER_QUESTIONS: list[tuple[str, tuple[int, ...]]] = [
    ("Who proposed scaled dot-product attention and multi-head attention?", (1,)),
    ("What is self-attention, also called intra-attention?", (2,)),
    ("How many identical layers are in the encoder stack?", (3,)),
    ("How does the decoder stop positions from attending to subsequent positions?", (3, 5)),
    ("Why are the dot products scaled by one over the square root of d_k?", (4,)),
    ("What are the two most commonly used attention functions?", (4,)),
    ("How many parallel attention heads does the model use?", (5,)),
    ("What is the dimensionality of the inner layer of the feed-forward network?", (5,)),
    ("What are the three ways the Transformer uses multi-head attention?", (5,)),
    ("Which weight matrix is shared between the embedding layers and the pre-softmax linear transformation?", (5,)),
    ("Which functions are used for the positional encodings?", (6,)),
    ("Why was the sinusoidal positional encoding chosen over learned positional embeddings?", (6,)),
    ("What is the maximum path length for self-attention compared to recurrent layers?", (6,)),
    ("What data set was used for English-German training and how many sentence pairs does it have?", (7,)),
    ("On what hardware were the models trained?", (7,)),
    ("How long did training the big models take?", (7, 8)),
    ("Which optimizer was used, with which beta values?", (7,)),
    ("How many warmup steps does the learning rate schedule use?", (7,)),
    ("What dropout rate was used for the base model?", (7,)),
    ("What value of label smoothing was used during training?", (8,)),
    ("What BLEU score does the big model reach on English-to-German?", (1, 8)),
    ("What beam size and length penalty were used?", (8,)),
    ("How many checkpoints were averaged for the base and the big models?", (8,)),
    ("How much worse is single-head attention than the best setting?", (8,)),
    ("How were the floating point operations used for training estimated?", (8,)),
    ("What happens when the attention key size d_k is reduced?", (9,)),
    ("What F1 score does the Transformer get on WSJ constituency parsing?", (9,)),
    ("How many training sentences are in the WSJ portion of the Penn Treebank?", (10,)),
    ("Where is the code used to train and evaluate the models available?", (10,)),
    ("Which input and output modalities do the authors plan to extend the Transformer to?", (10,)),
]


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
