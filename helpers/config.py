"""Run-time configuration: the profile, the device, seeding and a one-line summary.

Every notebook runs at three sizes, chosen by the environment variable ``TFS_PROFILE``:

* ``ci``  - a couple of minutes on 2 CPU cores, offline (what the test suite runs);
* ``cpu`` - about 15 minutes on a laptop CPU (the figures quoted in the README);
* ``gpu`` - the original tutorial's scale on a CUDA GPU.

A notebook states its hyper-parameters once with :func:`pick` and never branches on the
profile anywhere else.
"""

from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch

from .distributed import local_rank

PROFILES = ("ci", "cpu", "gpu")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def get_profile(profile: str | None = None) -> str:
    """The profile to use: ``profile`` if given, else ``$TFS_PROFILE`` if set, else ``gpu`` with CUDA
    and ``cpu`` without. Case and surrounding spaces do not matter (``CPU`` is ``cpu``); anything
    else is a ``ValueError`` that lists the profiles. Every reader of the profile calls this."""
    value = (profile if profile is not None else os.environ.get("TFS_PROFILE", "")).strip().lower()
    if not value:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if value not in PROFILES:
        source = "the profile" if profile is not None else "TFS_PROFILE"
        raise ValueError(
            f"{source}={value!r} is not a profile; use one of {', '.join(PROFILES)} "
            "(or leave it unset to choose gpu/cpu from the hardware)."
        )
    return value


def pick(*, ci, cpu, gpu, profile: str | None = None):
    """Return the value for the active profile, e.g. ``steps = pick(ci=200, cpu=3000, gpu=20000)``,
    or a whole recipe: ``hp = pick(**recipes.ARITHMETIC)``."""
    return {"ci": ci, "cpu": cpu, "gpu": gpu}[get_profile(profile)]


def is_offline() -> bool:
    """True when ``TFS_OFFLINE`` is set: no code in the course opens a network connection."""
    return _truthy(os.environ.get("TFS_OFFLINE"))


def in_colab() -> bool:
    """True inside Google Colab."""
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def get_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU.

    ``$TFS_DEVICE`` (or ``prefer``) overrides the choice, e.g. ``TFS_DEVICE=cpu``.
    """
    choice = prefer or os.environ.get("TFS_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())  # under torchrun, the GPU of this process
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU ``torch.Generator`` seeded alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return torch.Generator().manual_seed(seed)


def summary() -> str:
    """One line: profile, device and library versions, printed by every notebook's setup cell."""
    device = get_device()
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    parts = [
        f"profile={get_profile()}",
        f"device={name}",
        f"threads={torch.get_num_threads()}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
    ]
    if is_offline():
        parts.append("offline")
    return " | ".join(parts)
