"""Reading a PDF for retrieval: its text page by page, cleaned, cut into chunks that each cite one page.

    PDF --read_pdf--> pages --clean_pages--> text --chunk_pages--> chunks (each with its page)
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..data import DatasetInfo, RemoteFile, fetch_file, register

# --------------------------------------------------------------------------- the paper

# The mirror's copy carries arXiv's stamp "arXiv:1706.03762v5 [cs.CL] 6 Dec 2017", so its
# canonical source is version 5 (later versions add a notice on page 1 and differ in bytes).
PAPER = register(
    DatasetInfo(
        name="attention-paper",
        description="Vaswani et al. (2017), Attention Is All You Need, arXiv 1706.03762v5: a 15-page PDF.",
        homepage="https://arxiv.org/abs/1706.03762",
        files=(
            RemoteFile(
                "pdf/attention-is-all-you-need.pdf",
                "https://arxiv.org/pdf/1706.03762v5",
                "92da9a61f72ecbf5437d697d45f867199239fa376fabb433e6196635fda3acdb",
            ),
        ),
    )
)


# The second paper, whose stamp reads "arXiv:1810.04805v2 [cs.CL] 24 May 2019": version 2.
BERT_PAPER = register(
    DatasetInfo(
        name="bert-paper",
        description="Devlin et al. (2019), BERT: Pre-training of Deep Bidirectional Transformers for Language "
                    "Understanding, arXiv 1810.04805v2: a 16-page PDF.",
        homepage="https://arxiv.org/abs/1810.04805",
        files=(
            RemoteFile(
                "pdf/bert.pdf",
                "https://arxiv.org/pdf/1810.04805v2",
                "5513fcf7d0dfb3392ca6b3d9c6fd0906a9e6faac8c9844c457a3421bd8f9dfdb",
            ),
        ),
    )
)
PAPERS = {"attention": PAPER, "bert": BERT_PAPER}


def paper_path(name: str = "attention") -> Path:
    """Local path of a mirrored paper (cache, then mirror, then arXiv): "attention" for Attention Is All
    You Need, "bert" for BERT."""
    if name not in PAPERS:
        raise ValueError(f"no paper named {name!r}; use one of {', '.join(PAPERS)}")
    info = PAPERS[name]
    return fetch_file(info.files[0], info.name)


# --------------------------------------------------------------------------- errors


class PDFError(ValueError):
    """A PDF that cannot be read as text; the message says what to do."""


class PDFNotFoundError(PDFError, FileNotFoundError):
    """The path does not exist."""


class NotAPDFError(PDFError):
    """The file is not a PDF (or is too damaged to be read as one)."""


class EncryptedPDFError(PDFError):
    """The PDF is password-protected."""


class NoTextError(PDFError):
    """The PDF has no extractable text (typically a scan)."""


# --------------------------------------------------------------------------- reading


def read_pdf(path, password: str | None = None) -> list[str]:
    """The raw text of each page: ``texts[i]`` is page ``i + 1``. Raises a :class:`PDFError`
    (missing file, not a PDF, encrypted, no text) whose message says what to do."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError
    except ImportError as err:
        raise ImportError("reading PDFs needs pypdf: `pip install pypdf` (it is in requirements.txt).") from err

    path = Path(path)
    if not path.is_file():
        raise PDFNotFoundError(f"no PDF at {path}: check the path (a relative one starts from the working directory).")
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if b"%PDF-" not in head:
        raise NotAPDFError(f"{path} is not a PDF (it does not start with '%PDF-'); export or print it to PDF first.")
    locked = f"{path} is password-protected; pass password=... or save an unprotected copy."
    try:
        reader = PdfReader(path)
        # An empty password opens PDFs that only restrict printing or copying.
        if reader.is_encrypted and not reader.decrypt(password or ""):
            raise EncryptedPDFError(locked)
        texts = [page.extract_text() or "" for page in reader.pages]
    except FileNotDecryptedError as err:
        raise EncryptedPDFError(locked) from err
    except DependencyError as err:  # AES encryption needs the cryptography package
        raise EncryptedPDFError(f"{path} is encrypted with AES: `pip install cryptography` to open it ({err}).") from err
    except (PdfReadError, ValueError, KeyError, OSError) as err:
        if isinstance(err, PDFError):
            raise
        raise NotAPDFError(f"{path} looks like a PDF but cannot be read ({type(err).__name__}: {err}); "
                           "it may be damaged: open and re-save it.") from err
    if not any(t.strip() for t in texts):
        raise NoTextError(
            f"{path} has {len(texts)} page(s) but no extractable text: it is probably scanned images. "
            "Run OCR on it first (for example `ocrmypdf in.pdf out.pdf`)."
        )
    return texts


def _line_key(line: str) -> str:
    """Headers and footers repeat up to their page number: compare lines with digits masked."""
    return re.sub(r"\d+", "#", line.strip().lower())


def _strip_headers_footers(pages: list[list[str]], n_edge: int = 2) -> list[list[str]]:
    """Drop lines that open or close at least half of the pages (3 or more), and bare page numbers."""
    counts = Counter()
    for lines in pages:
        edge = lines[:n_edge] + lines[-n_edge:]
        counts.update({_line_key(line) for line in edge if line.strip()})
    min_pages = max(3, (len(pages) + 1) // 2)
    repeated = {key for key, n in counts.items() if n >= min_pages}

    def is_furniture(line):
        return _line_key(line) in repeated or re.fullmatch(r"\s*\d{1,4}\s*", line) is not None

    out = []
    for lines in pages:
        lines = list(lines)
        for _ in range(n_edge):  # peel from both ends, so a header under a page number goes too
            if lines and is_furniture(lines[0]):
                lines.pop(0)
            if lines and is_furniture(lines[-1]):
                lines.pop()
        out.append(lines)
    return out


def _join_hyphenation(text: str, vocabulary: set[str]) -> str:
    """Undo hyphenation at line ends: 'transduc-\ntion' -> 'transduction'. The hyphen stays when the
    document shows it is part of the word: the pair appears hyphenated elsewhere ('English-\nto-German'),
    or both halves are words of 4+ letters that the document uses while the joined form is not
    ('sequence-\naligned'). A heuristic: the document itself is the only dictionary."""

    def join(m):
        left, right = m.group(1), m.group(2)
        joined, pair = (left + right).lower(), f"{left}-{right}".lower()
        words = min(len(left), len(right)) >= 4 and {left.lower(), right.lower()} <= vocabulary
        if joined not in vocabulary and (pair in vocabulary or words):
            return f"{left}-{right}"
        return left + right

    return re.sub(r"(\w+)-\n(\w+)", join, text)


def clean_pages(texts: list[str]) -> list[str]:
    """Normalise the raw page texts: Unicode ligatures (ﬁ -> fi), repeated headers and footers,
    words hyphenated across lines, and whitespace. Returns one string per page."""
    texts = [unicodedata.normalize("NFKC", t).replace("\r", "") for t in texts]
    pages = _strip_headers_footers([[line for line in t.split("\n") if line.strip()] for t in texts])
    texts = ["\n".join(lines) for lines in pages]
    # The document's own vocabulary, line-end breaks left out: its words, and every hyphenated pair
    # of its compounds ('english-to-german' gives 'english-to' and 'to-german').
    vocabulary = set()
    unbroken = re.sub(r"\w+-\n\w+", " ", "\n".join(texts)).lower()
    for compound in re.findall(r"\w+(?:-\w+)*", unbroken):
        parts = compound.split("-")
        vocabulary.update(parts)
        vocabulary.update(f"{a}-{b}" for a, b in zip(parts, parts[1:], strict=False))
    out = []
    for t in texts:
        t = _join_hyphenation(t, vocabulary)
        out.append(re.sub(r"\s+", " ", t).strip())
    return out


# --------------------------------------------------------------------------- chunking


@dataclass(frozen=True)
class Chunk:
    """A few sentences of one page: what the index stores and the search returns."""

    id: int
    page: int  # 1-based page number
    text: str

    @property
    def n_words(self) -> int:
        return len(self.text.split())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")


def split_sentences(text: str, max_words: int | None = None) -> list[str]:
    """Split on sentence ends ('. ' before a capital or a digit); a 'sentence' longer than
    ``max_words`` (a table, a list of words) is cut into pieces of ``max_words``."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]
    if max_words is None:
        return sentences
    out = []
    for s in sentences:
        words = s.split()
        out += [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]
    return out


def chunk_pages(pages: list[str], max_words: int = 80, overlap_words: int = 20) -> list[Chunk]:
    """Pack each page's sentences into chunks of at most ``max_words`` words; consecutive chunks of
    a page share their boundary sentences (up to ``overlap_words`` words). A chunk never spans two
    pages, so each one cites exactly one page."""
    if max_words < 1 or not 0 <= overlap_words < max_words:
        raise ValueError(f"need max_words >= 1 and 0 <= overlap_words < max_words, got {max_words}, {overlap_words}")
    chunks: list[Chunk] = []
    for page, text in enumerate(pages, start=1):
        units = split_sentences(text, max_words)
        sizes = [len(u.split()) for u in units]
        start = 0
        while start < len(units):
            end, words = start, 0
            while end < len(units) and words + sizes[end] <= max_words:
                words += sizes[end]
                end += 1
            chunks.append(Chunk(len(chunks), page, " ".join(units[start:end])))
            if end == len(units):
                break
            # Step back over whole sentences for the overlap, but always move forward.
            back, shared = end, 0
            while back - 1 > start and shared + sizes[back - 1] <= overlap_words:
                back -= 1
                shared += sizes[back]
            start = back
    return chunks
