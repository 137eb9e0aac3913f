"""The question set of notebook 10: questions on the two mirrored papers, each with the fact its answer must
state and the pages that hold it, in two sets: development questions (46: every choice of the prompt, the
context, the decoding and the extractive answer is made on them) and held-out questions (30, reported once).

The held-out questions were written after the development ones had been used for tuning, by reading the papers'
cleaned pages only, without running any answering code: each fact was checked against the sentence of the paper
that states it and against every page listed.

A **fact** is a tuple of required key terms; a term is a string or a tuple of alternatives. An answer
*states the fact* when every term appears in it after :func:`normalise` (see :func:`states_fact`).
A term ending in ``*`` is a word prefix ("mask*" matches "masking"); any other term must match whole words.
The facts and pages were written by reading the cleaned text of each page (``rag.clean_pages``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

Term = str | tuple[str, ...]


@dataclass(frozen=True)
class Question:
    paper: str  # "attention" or "bert" (rag.paper_path(paper))
    question: str
    fact: tuple[Term, ...]  # every term must appear in the answer
    pages: tuple[int, ...]  # the pages that state the fact
    split: str = "dev"  # "dev" or "test"


def _questions(paper: str, rows, split: str) -> list[Question]:
    return [Question(paper, q, tuple(fact), tuple(pages), split) for q, fact, pages in rows]


ATTENTION = _questions("attention", [
    ("Who proposed scaled dot-product attention and multi-head attention?", ["noam"], (1,)),
    ("What is self-attention, also called intra-attention?", ["position*", "single sequence"], (2,)),
    ("How many identical layers are in the encoder stack?", ["6"], (3,)),
    ("How does the decoder stop positions from attending to subsequent positions?", ["mask*"], (3, 5)),
    ("Why are the dot products scaled by one over the square root of d_k?", ["softmax", "gradient*"], (4,)),
    ("What are the two most commonly used attention functions?",
     ["additive", ("dot product", "multiplicative")], (4,)),
    ("How many parallel attention heads does the model use?", ["8"], (5,)),
    ("What is the dimensionality of the inner layer of the feed-forward network?", ["2048"], (5,)),
    ("What are the three ways the Transformer uses multi-head attention?", ["encoder decoder", "self attention"],
     (5,)),
    ("Which weight matrix is shared between the embedding layers and the pre-softmax linear transformation?",
     ["embedding*", ("same", "shared", "share*")], (5,)),
    ("Which functions are used for the positional encodings?", [("sine", "sin"), ("cosine", "cos")], (6,)),
    ("Why was the sinusoidal positional encoding chosen over learned positional embeddings?",
     [("extrapolat*", "longer")], (6,)),
    ("What is the maximum path length for self-attention compared to recurrent layers?",
     [("o(1)", "constant"), "o(n)"], (6,)),
    ("What data set was used for English-German training and how many sentence pairs does it have?",
     ["wmt", ("4.5 million", "4.5m")], (7,)),
    ("On what hardware were the models trained?", ["8", "p100"], (7,)),
    ("How long did training the big models take?", ["3.5 days"], (7, 8)),
    ("Which optimizer was used, with which beta values?", ["adam", "0.9", "0.98"], (7,)),
    ("How many warmup steps does the learning rate schedule use?", ["4000"], (7,)),
    ("What dropout rate was used for the base model?", ["0.1"], (7,)),
    ("What value of label smoothing was used during training?", ["0.1"], (8,)),
    ("What BLEU score does the big model reach on English-to-German?", ["28.4"], (1, 8)),
    ("What beam size and length penalty were used?", ["4", "0.6"], (8,)),
    ("How many checkpoints were averaged for the base and the big models?", ["5", "20"], (8,)),
    ("How much worse is single-head attention than the best setting?", ["0.9"], (8,)),
    ("How were the floating point operations used for training estimated?", ["training time", "gpu*"], (8,)),
    ("What happens when the attention key size d_k is reduced?",
     [("hurt*", "worse", "degrad*", "lower*", "drop*"), "quality"], (9,)),
    ("What F1 score does the Transformer get on WSJ constituency parsing?", [("91.3", "92.7")], (9,)),
    ("How many training sentences are in the WSJ portion of the Penn Treebank?", [("40k", "40000")], (10,)),
    ("Where is the code used to train and evaluate the models available?", ["tensor2tensor"], (10,)),
    ("Which input and output modalities do the authors plan to extend the Transformer to?",
     ["image*", "audio", "video"], (10,)),
], "dev")

BERT = _questions("bert", [
    ("What does BERT stand for?", ["bidirectional encoder representations from transformers"], (1,)),
    ("What GLUE score does BERT reach?", ["80.5"], (1, 6)),
    ("What percentage of the WordPiece tokens in each sequence is masked at random?", ["15 percent"], (4, 12, 13)),
    ("How many layers does BERT-base have?", ["12"], (3,)),
    ("How many parameters does BERT-large have?", [("340m", "340 million")], (3, 8)),
    ("How large is the WordPiece vocabulary?", [("30000", "30k")], (4,)),
    ("Which corpora are used for pre-training?", [("bookscorpus", "books corpus"), "wikipedia"], (5, 14)),
    ("How often is a token chosen for prediction replaced with the [MASK] token?", ["80 percent"], (4, 12)),
    ("What are the two pre-training tasks of BERT?", ["mask*", "next sentence"], (2, 4)),
    ("What batch size was used for pre-training?", ["256"], (13,)),
    ("Which activation function does BERT use?", ["gelu"], (13,)),
    ("How long did each pre-training take?", ["4 days"], (13,)),
    ("What learning rate was used to fine-tune on SQuAD v1.1?", ["5e 5"], (6,)),
    ("What Test F1 does BERT reach on SQuAD v1.1?", ["93.2"], (1, 7)),
    ("What dropout probability is used in pre-training?", ["0.1"], (13,)),
    ("In next sentence prediction, how often is sentence B the actual next sentence?", ["50 percent"], (4, 13)),
], "dev")

# The held-out questions, answered once (see the module's docstring)
ATTENTION_TEST = _questions("attention", [
    ("What is the output dimension of every sub-layer and embedding layer in the Transformer?", ["512"], (3, 5)),
    ("Which normalisation is applied after the residual connection around each sub-layer?",
     [("layer normalization", "layer normalisation", "layernorm", "layer norm")], (3,)),
    ("How does the number of operations needed to relate two distant positions grow in ConvS2S and in ByteNet?",
     ["linear*", "logarithm*"], (2,)),
    ("What do the authors use to counteract the reduced effective resolution caused by averaging "
     "attention-weighted positions?",
     [("multi head", "multihead")], (2,)),
    ("What is the dimension of the keys and values used in each attention head?", ["64"], (5,)),
    ("Which activation function is used between the two linear transformations of the feed-forward network?",
     ["relu"], (5,)),
    ("Why did the authors expect the sinusoidal encoding to let the model attend by relative positions easily?",
     [("linear function", "linearly")], (6,)),
    ("When is a self-attention layer computationally cheaper than a recurrent layer?",
     ["sequence length", ("smaller", "less", "shorter", "fewer", "lower"), "dimension*"], (6,)),
    ("How large is the shared source-target byte-pair vocabulary for English-German?", ["37000"], (7,)),
    ("Roughly how many source tokens and target tokens does each training batch hold?", ["25000"], (7,)),
    ("For how many training steps were the big Transformer models trained?", [("300000", "300k")], (7,)),
    ("What maximum output length was allowed during translation inference?", ["input length", "50"], (8,)),
    ("What effect does label smoothing have on perplexity?",
     [("hurt*", "worse*", "increas*", "higher", "degrad*"), "perplexity"], (8,)),
    ("What vocabulary sizes were used for the WSJ-only and the semi-supervised parsing settings?",
     [("16k", "16000"), ("32k", "32000")], (10,)),
    ("Which beam size and alpha were used for constituency parsing?", ["21", "0.3"], (10,)),
    ("Which previously reported parser still did better than the Transformer on WSJ parsing?",
     [("recurrent neural network grammar", "rnng")], (10,)),
], "test")

BERT_TEST = _questions("bert", [
    ("What feed-forward (filter) size does BERT use when the hidden size is 768?", ["3072"], (3,)),
    ("How is the input representation of a token built in BERT?", ["sum*", "segment*", "position*"], (4, 5)),
    ("Why is a document-level corpus preferred over a shuffled sentence-level corpus for pre-training?",
     ["contiguous"], (5,)),
    ("How long at most does it take to reproduce the paper's fine-tuning results on a single Cloud TPU?",
     ["1 hour"], (5,)),
    ("Why did the authors run several random restarts when fine-tuning BERT-large on GLUE?",
     [("unstable", "instab*"), "small"], (6,)),
    ("How does BERT handle SQuAD 2.0 questions that have no answer?", ["start", "end", "cls"], (7,)),
    ("For how many epochs and with what batch size was BERT fine-tuned on SQuAD 2.0?", ["2 epochs", "48"], (7,)),
    ("On which tasks does removing next sentence prediction hurt performance significantly?",
     ["qnli", "mnli", "squad"], (8,)),
    ("How many labeled training examples does MRPC have?", ["3600"], (8,)),
    ("Which feature-based approach worked best for NER?", ["concat*", "4"], (9, 16)),
    ("What is the purpose of sometimes keeping the selected word unchanged in the masking procedure?",
     ["bias*", ("observed", "actual")], (12,)),
    ("What shorter sequence length was used for most of the pre-training steps?", ["128"], (13,)),
    ("What majority-class baseline accuracy has every GLUE submission failed to beat on WNLI?", ["65.1"], (15,)),
    ("How much additional MNLI accuracy does BERT-base gain from 1M rather than 500k pre-training steps?",
     [("1.0 percent", "1 percent")], (16,)),
], "test")

QUESTIONS: list[Question] = ATTENTION + BERT + ATTENTION_TEST + BERT_TEST


# --------------------------------------------------------------------------- states the fact

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}


def normalise(text: str) -> str:
    """Lower case, Unicode NFKC (ligatures, unusual minus signs), '%' as ' percent', no thousands
    separators ('30,000' -> '30000'), number words up to twelve as digits, hyphens and dashes as spaces,
    one space between words. The same function runs on answers and on key terms."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2212", "-")
    text = text.replace("%", " percent")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", lambda m: _NUMBER_WORDS[m.group(1)], text)
    text = re.sub(r"[-\u2010-\u2015]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _term_pattern(term: str) -> str:
    prefix = term.endswith("*")
    body = re.escape(normalise(term.rstrip("*")))
    # whole words; a number may not be part of a longer one ('6' is not in '64' or '0.6')
    return rf"(?<![\w.]){body}" + ("" if prefix else r"(?![\w]|\.\d)")


def term_found(term: Term, text: str) -> bool:
    """Whether a key term (or one of its alternatives) appears in ``text`` (already normalised)."""
    options = (term,) if isinstance(term, str) else term
    return any(re.search(_term_pattern(t), text) for t in options)


def states_fact(answer: str, fact: tuple[Term, ...]) -> bool:
    """True when every key term of ``fact`` appears in the answer, after :func:`normalise`."""
    text = normalise(answer)
    return all(term_found(t, text) for t in fact)
