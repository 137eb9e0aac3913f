"""Finding the chunks that answer a question: dense vectors (all-MiniLM-L6-v2 in our own Encoder), BM25,
and the two fused by reciprocal rank, behind one :class:`DocumentIndex`.

    chunks --DocumentIndex--> dense vectors + a BM25 index
    question --search--> top-k chunks (dense, BM25, or both fused by reciprocal rank)
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .openai_api import openai_client_from_env
from .pdf import Chunk, chunk_pages, clean_pages, read_pdf


def _check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question is empty ({question!r}); ask something about the document, e.g. "
                         "'How many attention heads does the model use?'")
    return question.strip()


# --------------------------------------------------------------------------- BM25

_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how in into is it its of on or that the their "
    "this to was were what when where which who why with we our they these those than then there".split()
)


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased words and numbers, without stop words and with a plural 's' stripped."""
    words = re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKC", text).lower())
    return [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in words if w not in _STOPWORDS]


class BM25:
    """Okapi BM25 over a fixed list of documents.

    score(q, d) = sum over query terms t of idf(t) * tf(t,d) (k1 + 1) / (tf(t,d) + k1 (1 - b + b |d| / avgdl)),
    with idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5)) (Lucene's variant, never negative).
    The per-(document, term) factor is precomputed, so a query is one gather and a sum.
    """

    def __init__(self, documents: list[str], k1: float = 1.5, b: float = 0.75):
        tokens = [bm25_tokens(d) for d in documents]
        self.vocab = {t: i for i, t in enumerate(sorted({t for doc in tokens for t in doc}))}
        n_docs, n_terms = len(documents), len(self.vocab)
        tf = torch.zeros(n_docs, n_terms)  # (N, V) term counts
        for row, doc in enumerate(tokens):
            ids = torch.tensor([self.vocab[t] for t in doc], dtype=torch.long)
            tf[row] = torch.bincount(ids, minlength=n_terms).float()
        doc_len = tf.sum(1, keepdim=True)  # (N, 1)
        df = (tf > 0).sum(0).float()  # (V,)
        self.idf = torch.log(1 + (n_docs - df + 0.5) / (df + 0.5))  # (V,)
        norm = k1 * (1 - b + b * doc_len / doc_len.mean().clamp(min=1))  # (N, 1)
        self.weights = tf * (k1 + 1) / (tf + norm)  # (N, V)

    def scores(self, query: str) -> torch.Tensor:
        """BM25 score of every document for ``query``: (N,). A repeated query word counts twice."""
        ids = torch.tensor([self.vocab[t] for t in bm25_tokens(query) if t in self.vocab], dtype=torch.long)
        return (self.weights[:, ids] * self.idf[ids]).sum(1)


def reciprocal_rank_fusion(*scores: torch.Tensor, k: int = 60) -> torch.Tensor:
    """Fuse rankings, not scores: each document gets sum over rankers of 1 / (k + its rank),
    rank 1 being the best. Scores on different scales (cosines, BM25) combine without tuning.
    Tied scores share a rank (1 + the number of better documents), so that the many documents
    BM25 scores 0 are not ordered by their position in the file."""
    fused = torch.zeros(len(scores[0]))
    for s in scores:
        s = s.float()
        n_better = len(s) - torch.searchsorted(s.sort().values, s, right=True)  # (N,) strictly greater
        fused += 1.0 / (k + 1 + n_better)
    return fused


# --------------------------------------------------------------------------- embeddings


@lru_cache(maxsize=1)
def local_embedder():
    """all-MiniLM-L6-v2 in our own Encoder (offline), loaded once: ``.encode(texts) -> (N, 384)``."""
    from ..pretrained import load_minilm

    return load_minilm()


class OpenAIEmbedder:
    """OpenAI (or any compatible server's) embeddings, with the local model's ``.encode`` interface."""

    def __init__(self, client=None, model: str = "text-embedding-3-small", batch_size: int = 256):
        self.client = client or openai_client_from_env()
        if self.client is None:
            raise RuntimeError("OpenAIEmbedder needs an API client: set OPENAI_API_KEY (and OPENAI_BASE_URL for "
                               "another compatible server), or pass client=openai.OpenAI(...).")
        self.model, self.batch_size = model, batch_size

    def encode(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = []
        for start in range(0, len(texts), self.batch_size):
            reply = self.client.embeddings.create(model=self.model, input=texts[start : start + self.batch_size])
            rows += [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
        return F.normalize(torch.tensor(rows, dtype=torch.float), dim=-1)  # (N, D)


# --------------------------------------------------------------------------- the index


@dataclass
class Hit:
    """One search result: the chunk's page and text, and its score under the method used."""

    page: int
    text: str
    score: float
    chunk: int  # index into DocumentIndex.chunks


METHODS = ("dense", "bm25", "hybrid")


class DocumentIndex:
    """Chunks of one document, searchable by meaning (dense), by words (BM25) or both (hybrid)."""

    def __init__(self, chunks: list[Chunk], embedder=None, source: str = "", pages: list[str] | None = None):
        if not chunks:
            raise ValueError("no chunks to index: the document has no text.")
        self.chunks, self.source, self.pages = chunks, source, pages or []
        self.embedder = embedder if embedder is not None else local_embedder()
        self.embeddings = self.embedder.encode([c.text for c in chunks])  # (N, D), unit rows
        self.bm25 = BM25([c.text for c in chunks])

    @classmethod
    def from_pdf(cls, path, *, embedder=None, password: str | None = None,
                 max_words: int = 80, overlap_words: int = 20) -> DocumentIndex:
        """Read, clean, chunk and index a PDF (see :func:`read_pdf` for the errors it raises)."""
        pages = clean_pages(read_pdf(path, password))
        return cls(chunk_pages(pages, max_words, overlap_words), embedder, source=Path(path).name, pages=pages)

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"DocumentIndex({self.source!r}: {len(self.pages)} pages, {len(self)} chunks)"

    def scores(self, question: str, method: str = "hybrid") -> torch.Tensor:
        """Every chunk's score for the question: (N,). Cosine for dense, BM25, or fused reciprocal ranks."""
        question = _check_question(question)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if method == "bm25":
            return self.bm25.scores(question)
        dense = self.embeddings @ self.embedder.encode([question])[0]  # (N,) cosines
        if method == "dense":
            return dense
        return reciprocal_rank_fusion(dense, self.bm25.scores(question))

    def search(self, question: str, k: int = 3, method: str = "hybrid") -> list[Hit]:
        """The ``k`` best chunks for the question, best first."""
        scores = self.scores(question, method)
        top = scores.topk(min(k, len(self)))
        return [Hit(self.chunks[i].page, self.chunks[i].text, float(s), int(i))
                for s, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def similarity(self, questions: list[str]) -> torch.Tensor:
        """Cosine similarity between questions and chunks: (Q, N)."""
        return self.embedder.encode(list(questions)) @ self.embeddings.T
