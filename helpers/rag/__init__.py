"""Chat with a PDF: retrieval-augmented answers with page citations (notebook 10).

The pipeline, one module a stage::

    PDF --read_pdf--> pages --clean_pages--> text --chunk_pages--> chunks (each with its page)      pdf
    chunks --DocumentIndex--> dense vectors (all-MiniLM-L6-v2) + a BM25 index                       retrieval
    question --search--> top-k chunks (dense, BM25, or both fused by reciprocal rank)               retrieval
    top-k chunks + question --answer--> a chat completion with page citations, streamed             answers
                                        (or, without an API key, the best-matching sentences)
    questions with their answer pages --hit_rates--> how often retrieval finds them                 evaluation

Every public name is re-exported here: ``from helpers import rag`` and ``rag.answer(index, question)``.
"""

from .answers import (
    NOT_FOUND,
    SYSTEM_PROMPT,
    Answer,
    answer,
    build_messages,
    cited_pages,
    extractive_answer,
)
from .evaluation import (
    PAPER_QUESTIONS,
    hit_rates,
    retrieved_pages,
)
from .openai_api import openai_client_from_env
from .pdf import (
    PAPER,
    Chunk,
    EncryptedPDFError,
    NotAPDFError,
    NoTextError,
    PDFError,
    PDFNotFoundError,
    chunk_pages,
    clean_pages,
    paper_path,
    read_pdf,
    split_sentences,
)
from .retrieval import (
    BM25,
    METHODS,
    DocumentIndex,
    Hit,
    OpenAIEmbedder,
    bm25_tokens,
    local_embedder,
    reciprocal_rank_fusion,
)

__all__ = [
    "Answer", "answer", "BM25", "bm25_tokens", "build_messages", "Chunk", "chunk_pages", "cited_pages",
    "clean_pages", "DocumentIndex", "EncryptedPDFError", "extractive_answer", "Hit", "hit_rates", "local_embedder",
    "METHODS", "NOT_FOUND", "NotAPDFError", "NoTextError", "openai_client_from_env", "OpenAIEmbedder", "PAPER",
    "paper_path", "PAPER_QUESTIONS", "PDFError", "PDFNotFoundError", "read_pdf", "reciprocal_rank_fusion",
    "retrieved_pages", "split_sentences", "SYSTEM_PROMPT",
]
