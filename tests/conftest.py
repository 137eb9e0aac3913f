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
