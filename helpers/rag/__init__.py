"""Chat with a PDF: retrieval-augmented answers with page citations (notebook 10).

The pipeline, one module a stage::

    PDF --read_pdf--> pages --clean_pages--> text --chunk_pages--> chunks (each with its page)      pdf
    chunks --DocumentIndex--> dense vectors (all-MiniLM-L6-v2) + a BM25 index                       retrieval
    question --search--> top-k chunks (dense, BM25, or both fused by reciprocal rank)               retrieval
    top-k chunks + question --answer--> an answer written by a generator, streamed:                 answers
        SmolLM2-135M-Instruct on this machine (local), or a chat API (openai_api);                 local
        or, with no model, the best-matching sentences (extractive)
    answer + passages --ground--> the pages that support it, or "not grounded" (extractive instead) grounding
    follow-up + history --Chat--> a question that stands alone                                      chat
    questions with facts and pages --answer_scores--> how often answers state the fact              evaluation

Every public name is re-exported here: ``from helpers import rag`` and ``rag.answer(index, question)``.
"""

from .answers import (
    EXAMPLE,
    MODES,
    NOT_FOUND,
    SYSTEM_PROMPT,
    Answer,
    answer,
    asks_for_number,
    build_messages,
    cited_pages,
    clean_sentence,
    extractive_answer,
    generated_answer,
    plain_words,
    select_sentences,
)
from .chat import Chat, Turn, rewrite
from .evaluation import (
    PAPER_QUESTIONS,
    answer_scores,
    chunk_metrics,
    chunk_ranks,
    evaluate_answers,
    hit_rates,
    judge,
    retrieved_pages,
    timed_answer,
)
from .grounding import Grounding, ground, key_terms, number_in_context, numbers, strip_citations
from .local import BaseModelReader, LocalModel, LocalModelError, gemma_reader, local_model, sentence_end
from .openai_api import OpenAIChat, openai_client_from_env, use_colab_secret
from .pdf import (
    BERT_PAPER,
    PAPER,
    PAPERS,
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
from .questions import QUESTIONS, Question, normalise, states_fact
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
    "Answer", "answer", "BaseModelReader", "gemma_reader", "plain_words", "chunk_metrics", "chunk_ranks", "asks_for_number", "clean_sentence", "number_in_context", "answer_scores", "evaluate_answers", "timed_answer", "BERT_PAPER", "BM25", "bm25_tokens", "build_messages", "Chat", "Chunk",
    "chunk_pages", "cited_pages", "clean_pages", "DocumentIndex", "EncryptedPDFError", "EXAMPLE",
    "extractive_answer", "generated_answer", "ground", "Grounding", "Hit", "hit_rates", "judge", "key_terms",
    "local_embedder", "local_model", "LocalModel", "LocalModelError", "METHODS", "MODES", "normalise",
    "NOT_FOUND", "NotAPDFError", "NoTextError", "numbers", "OpenAIChat", "openai_client_from_env",
    "OpenAIEmbedder", "PAPER", "paper_path", "PAPER_QUESTIONS", "PAPERS", "PDFError", "PDFNotFoundError",
    "Question", "QUESTIONS", "read_pdf", "reciprocal_rank_fusion", "retrieved_pages", "rewrite",
    "select_sentences", "sentence_end", "split_sentences", "states_fact", "strip_citations", "SYSTEM_PROMPT",
    "Turn", "use_colab_secret",
]
