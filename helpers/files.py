"""Writing files so that nothing is ever half-written: :func:`atomic_write`.

Downloads, decoded data caches and checkpoints are all written the same way: to a temporary file
beside the destination, renamed into place only when the writing finished without an error. A crash,
an interrupted download or a failed checksum leaves the destination as it was (absent, or the
previous complete version), never a truncated file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on leaving the ``with`` block without an
    exception, rename it to ``path`` (an atomic replace on the same file system), else delete it.

    >>> with atomic_write(dest) as tmp:
    ...     torch.save(payload, tmp)      # dest appears only once this has succeeded
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
