"""The data layer: a registry of data sets, and the cache -> mirror -> download lookup.

Every file the course reads is listed in :data:`REGISTRY` with its canonical URL and the SHA-256
of the file as stored on disk. :func:`fetch_file` looks for it, in order, in

1. the cache, ``$TFS_DATA_DIR`` (default: ``data/`` at the repository root);
2. the read-only mirror ``$TFS_DATA_MIRROR``, if set (laid out like the cache);
3. the canonical URL, unless ``$TFS_OFFLINE`` is set.

A download goes to a temporary file next to its destination, is decompressed if needed, checked
against its SHA-256 and only then renamed into place, so an interrupted or corrupted download never
leaves a half-written file behind.

Topic modules (``helpers.audio``, ``helpers.music``, ...) register their own data sets with
:func:`register` and build their loaders on :func:`fetch_file`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import is_offline
from .files import atomic_write


class DataError(RuntimeError):
    """Base class of the data layer's errors."""


class DataUnavailableError(DataError):
    """The data is in neither the cache nor the mirror, and cannot be downloaded."""


class OfflineError(DataUnavailableError):
    """Something the course would download (a data set, pretrained weights) is needed while
    ``TFS_OFFLINE`` forbids the network. The message says where it looked and what to do."""


class ChecksumError(DataError):
    """A file's SHA-256 differs from the one in the registry."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set.

    ``path`` is relative to the cache and the mirror; ``sha256`` is that of the stored file
    (after decompression when ``gunzip`` is true).
    """

    path: str
    url: str
    sha256: str
    gunzip: bool = False


@dataclass(frozen=True)
class FolderDigest:
    """A folder of many small files (such as one image per file), verified as a whole.

    ``sha256`` is :func:`folder_sha256` of the folder: the digest of every file's relative path and
    contents, in sorted order, so a missing, extra, renamed or changed file changes it.
    """

    path: str  # relative to the cache and the mirror
    sha256: str
    n_files: int


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    homepage: str
    files: tuple[RemoteFile, ...]
    folders: tuple[FolderDigest, ...] = ()

    def folder(self, path: str) -> FolderDigest:
        for f in self.folders:
            if f.path == path:
                return f
        raise KeyError(f"{self.name} has no folder {path!r}")

    def file(self, path: str) -> RemoteFile:
        for f in self.files:
            if f.path == path or f.path.endswith("/" + path):
                return f
        raise KeyError(f"{self.name} has no file {path!r}")


REGISTRY: dict[str, DatasetInfo] = {}


def register(info: DatasetInfo) -> DatasetInfo:
    """Add a data set to the registry (topic modules call this at import time)."""
    REGISTRY[info.name] = info
    return info


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

register(
    DatasetInfo(
        name="tinyshakespeare",
        description="Tiny Shakespeare: 1,115,394 characters of Shakespeare's plays (Karpathy's char-rnn).",
        homepage="https://github.com/karpathy/char-rnn",
        files=(
            RemoteFile(
                "tinyshakespeare/input.txt",
                # char-rnn at a fixed commit, so the bytes never move under the checksum
                "https://raw.githubusercontent.com/karpathy/char-rnn/d1d7aa34fdb3626174bce1d753e6cc6845ce7087/"
                "data/tinyshakespeare/input.txt",
                "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            ),
        ),
    )
)

register(
    DatasetInfo(
        name="mnist",
        description="MNIST handwritten digits: 60,000 training and 10,000 test images, 28x28 grey.",
        homepage="http://yann.lecun.com/exdb/mnist/",
        files=tuple(
            RemoteFile(f"MNIST/raw/{stem}", f"{_MNIST_URL}{stem}.gz", sha, gunzip=True)
            for stem, sha in [
                ("train-images-idx3-ubyte", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
                ("train-labels-idx1-ubyte", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
                ("t10k-images-idx3-ubyte", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
                ("t10k-labels-idx1-ubyte", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
            ]
        ),
    )
)


# --------------------------------------------------------------------------- locations


def repo_root() -> Path | None:
    """The repository root when the helpers are used from a checkout, else None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() and (root / "helpers").is_dir() else None


def data_dir() -> Path:
    """Where downloads and checkpoints go: ``$TFS_DATA_DIR``, else ``data/`` in the repository."""
    env = os.environ.get("TFS_DATA_DIR")
    if env:
        return Path(env).expanduser()
    root = repo_root()
    return root / "data" if root else Path.home() / ".cache" / "transformers-from-scratch"


def mirror_dir() -> Path | None:
    """The read-only mirror ``$TFS_DATA_MIRROR``, or None when it is not set."""
    env = os.environ.get("TFS_DATA_MIRROR")
    return Path(env).expanduser() if env else None


def checkpoints_dir() -> Path:
    return data_dir() / "checkpoints"


# --------------------------------------------------------------------------- lookup

_verified: set[tuple[str, int, float]] = set()


def sha256sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path) -> tuple[str, int]:
    """The SHA-256 of a folder's files (each one's path relative to ``folder``, then its bytes, in sorted
    order) and how many files it holds."""
    digest, count = hashlib.sha256(), 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
        count += 1
    return digest.hexdigest(), count


def verify_folder(folder: Path, expected: FolderDigest, dataset: str):
    """Raise :class:`ChecksumError` unless ``folder`` holds exactly the files of ``expected``."""
    actual, count = folder_sha256(folder)
    if actual != expected.sha256:
        raise ChecksumError(
            f"{dataset}: the folder {folder} ({count} files) does not match its registered SHA-256 "
            f"({expected.n_files} files, {expected.sha256[:16]}...). A file is missing, extra or changed: "
            "restore the folder from the course data mirror, or delete it to use another source."
        )


def _matches(path: Path, sha256: str) -> bool:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime)
    if key in _verified:
        return True
    if sha256sum(path) == sha256:
        _verified.add(key)
        return True
    return False


def _find_dataset(remote: RemoteFile) -> str:
    for info in REGISTRY.values():
        if remote in info.files:
            return info.name
    return "(unregistered)"


def fetch_file(remote: RemoteFile, dataset: str | None = None) -> Path:
    """Return a local path holding ``remote``, looking in the cache, the mirror, then online."""
    dataset = dataset or _find_dataset(remote)
    cached = data_dir() / remote.path
    if cached.exists():
        if _matches(cached, remote.sha256):
            return cached
        # A corrupted cache entry is replaced below, never used.
        print(f"[data] {cached} does not match its checksum; fetching it again.")

    mirror = mirror_dir()
    if mirror is not None:
        mirrored = mirror / remote.path
        if mirrored.exists():
            if _matches(mirrored, remote.sha256):
                return mirrored
            raise ChecksumError(
                f"{dataset}: the mirror's copy {mirrored} does not match its SHA-256 "
                f"({remote.sha256}). The mirror is damaged: restore it, or unset TFS_DATA_MIRROR to download."
            )

    looked = f"the cache {cached}" + (f" and the mirror {mirror / remote.path}" if mirror else "")
    if is_offline():
        raise OfflineError(
            f"{dataset}: {remote.path} is not available offline (looked in {looked}). "
            "Either point TFS_DATA_MIRROR at a folder holding the course data, copy the file into "
            f"{data_dir()}, or unset TFS_OFFLINE to download it from {remote.url}."
        )
    return download(remote, cached, dataset)


def download(remote: RemoteFile, dest: Path, dataset: str = "data") -> Path:
    """Download ``remote`` to ``dest`` atomically, verifying its SHA-256 before it is renamed into place."""
    with atomic_write(dest) as tmp:
        request = urllib.request.Request(remote.url, headers={"User-Agent": "transformers-from-scratch"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as out:
                source = gzip.GzipFile(fileobj=response) if remote.gunzip else response
                shutil.copyfileobj(source, out, length=1 << 20)
        except OSError as err:
            raise DataUnavailableError(
                f"{dataset}: could not download {remote.url} ({err}). Check the network, or set "
                "TFS_DATA_MIRROR to a folder holding the course data."
            ) from err
        actual = sha256sum(tmp)
        if actual != remote.sha256:
            raise ChecksumError(
                f"{dataset}: the download of {remote.url} has SHA-256 {actual}, expected {remote.sha256}. "
                "Nothing was saved. Try again; if it persists, the source has changed and the registry "
                "in helpers/data.py needs updating."
            )
    return dest


def fetch(name: str) -> dict[str, Path]:
    """Fetch every file of a registered data set; returns ``{relative path: local path}``."""
    if name not in REGISTRY:
        raise KeyError(f"unknown data set {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return dict(zip([f.path for f in REGISTRY[name].files], fetch_files(REGISTRY[name].files, name), strict=True))


def fetch_files(remotes, dataset: str, workers: int = 16) -> list[Path]:
    """:func:`fetch_file` for many files, in order. Files already in the cache or the mirror are used as
    they are; the others are downloaded ``workers`` at a time, with a progress bar."""
    from concurrent.futures import ThreadPoolExecutor

    remotes = list(remotes)
    mirror = mirror_dir()
    missing = [r for r in remotes if not (data_dir() / r.path).exists() and not (mirror and (mirror / r.path).exists())]
    if not missing or is_offline():  # offline, fetch_file raises the clear error for the first missing file
        return [fetch_file(r, dataset) for r in remotes]
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(missing), desc=f"downloading {dataset}") as bar:
        for _ in pool.map(lambda r: fetch_file(r, dataset), missing):
            bar.update(1)
    return [fetch_file(r, dataset) for r in remotes]


# --------------------------------------------------------------------------- loaders


def load_tiny_shakespeare() -> str:
    """The Tiny Shakespeare text (1,115,394 characters)."""
    path = fetch_file(REGISTRY["tinyshakespeare"].files[0], "tinyshakespeare")
    return path.read_text(encoding="utf-8")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): a magic number, the dimensions, then unsigned bytes."""
    raw = path.read_bytes()
    n_dims = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=n_dims, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * n_dims).reshape(dims.tolist())


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as tensors: images ``(N, 28, 28)`` uint8 in 0..255 and labels ``(N,)`` int64.

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    stem = "train" if split == "train" else "t10k"
    info = REGISTRY["mnist"]
    images = _read_idx(fetch_file(info.file(f"{stem}-images-idx3-ubyte"), "mnist"))
    labels = _read_idx(fetch_file(info.file(f"{stem}-labels-idx1-ubyte"), "mnist"))
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
