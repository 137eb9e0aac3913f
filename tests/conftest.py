import os

import pytest
import torch

# Unit tests are small and deterministic; keep them off any GPU and single-threaded enough to be quick.
os.environ.setdefault("TFS_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def mirror():
    """The read-only data mirror named by TFS_DATA_MIRROR (CI sets it)."""
    path = os.environ.get("TFS_DATA_MIRROR")
    if not path or not os.path.isdir(path):
        pytest.skip("TFS_DATA_MIRROR is not set to the course data mirror")
    return path


@pytest.fixture
def data_dirs(tmp_path, monkeypatch):
    """Empty cache and mirror folders under tmp_path, named by TFS_DATA_DIR and TFS_DATA_MIRROR, with the
    data layer's memory of verified files cleared. Online (TFS_OFFLINE unset) unless the test sets it."""
    from helpers import data

    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    cache.mkdir()
    mirror.mkdir()
    monkeypatch.setenv("TFS_DATA_DIR", str(cache))
    monkeypatch.setenv("TFS_DATA_MIRROR", str(mirror))
    monkeypatch.delenv("TFS_OFFLINE", raising=False)
    data._verified.clear()
    return cache, mirror
