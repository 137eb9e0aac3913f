"""Run-time configuration: the profile, the device, the precision it computes in, seeding and a one-line summary.

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
from contextlib import contextmanager, nullcontext

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


# --------------------------------------------------------------------------- precision, in one place


def autocast_dtype(device=None) -> torch.dtype | None:
    """The mixed precision the hardware runs natively, the one choice every training and evaluation loop follows:

    * CUDA with compute capability 8.0 and up (A100, L4, H100, H200, RTX 30xx/40xx): ``torch.bfloat16``, which
      has float32's range, so no loss scaling is needed;
    * older CUDA GPUs (Colab's free T4 is 7.5, V100 7.0): ``torch.float16``, whose narrow range needs a
      :func:`grad_scaler` in training; these cards have no fast bfloat16;
    * the CPU and Apple's MPS: ``None``, plain float32 (a laptop CPU has no fast half-precision multiply, and a
      model of the course's CPU size is too small for it to pay: ``benchmarks/train_throughput.py``).

    ``$TFS_AUTOCAST`` overrides the choice: ``bfloat16``, ``float16`` or ``none``.
    """
    forced = os.environ.get("TFS_AUTOCAST", "").strip().lower()
    if forced:
        choices = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
                   "none": None, "float32": None, "fp32": None}
        if forced not in choices:
            raise ValueError(f"TFS_AUTOCAST={forced!r}; use bfloat16, float16 or none")
        return choices[forced]
    device = torch.device(device) if device is not None else get_device()
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.bfloat16 if major >= 8 else torch.float16


def resolve_autocast(dtype, device) -> torch.dtype | None:
    """``"auto"`` -> :func:`autocast_dtype` of ``device``; a dtype or ``None`` (float32) is kept as given."""
    return autocast_dtype(device) if isinstance(dtype, str) and dtype == "auto" else dtype


def grad_scaler(device=None, dtype: torch.dtype | None = None) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` that scales the loss only where it is needed: float16 autocast on CUDA (small
    gradients would round to zero in float16's range). Anywhere else it is disabled and every call passes through,
    so a training loop can always use it."""
    device = torch.device(device) if device is not None else get_device()
    enabled = device.type == "cuda" and dtype == torch.float16
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


@contextmanager
def mixed_precision(device=None, dtype="auto"):
    """The ``with`` block computes in ``dtype`` (``"auto"``: :func:`autocast_dtype`, ``None``: float32) under
    ``torch.autocast``, and on CUDA with TF32 matrix multiplies (float32 inputs multiplied with a 10-bit
    mantissa by the tensor cores of an A100 or newer, about 8x faster); the global TF32 flags are restored
    afterwards, so code outside (a check against a reference, say) keeps exact float32."""
    device = torch.device(device) if device is not None else get_device()
    dtype = resolve_autocast(dtype, device)
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        # float32: no autocast at all (torch.autocast knows no "mps" before torch 2.5, nor "meta")
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            yield dtype
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); returns a CPU ``torch.Generator`` seeded alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return torch.Generator().manual_seed(seed)


def make_generator(seed: int, device=None) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` on ``device`` (default: :func:`get_device`), for random draws of
    tensors that live there: a CUDA tensor cannot be drawn with a CPU generator (``torch.randn(..., device="cuda",
    generator=cpu_generator)`` is an error). The same seed gives different numbers on different devices."""
    device = torch.device(device) if device is not None else get_device()
    return torch.Generator(device=device).manual_seed(seed)


def draw(sampler, *args, generator: torch.Generator | None = None, device=None, **kwargs) -> torch.Tensor:
    """``sampler(*args, **kwargs)`` (``torch.rand``, ``torch.randn``, ``torch.randint``...) drawn with ``generator``
    on the generator's own device, then moved to ``device``: a CPU generator then gives the same numbers whatever
    the device the result is used on (a notebook's samples do not change with the hardware), and a CUDA
    generator draws on the GPU. Without a generator the draw is made on ``device`` itself, from its global
    random state (:func:`seed_everything` seeds it).

    >>> noise = draw(torch.randn, (B, P), generator=torch.Generator().manual_seed(0), device=logits.device)
    """
    source = generator.device if generator is not None else torch.device(device or "cpu")
    out = sampler(*args, generator=generator, device=source, **kwargs)
    return out if device is None else out.to(device)


def summary() -> str:
    """One line: profile, device and library versions, printed by every notebook's setup cell."""
    device = get_device()
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    precision = autocast_dtype(device)
    parts = [
        f"profile={get_profile()}",
        f"device={name}",
        f"precision={str(precision).removeprefix('torch.') if precision else 'float32'}",
        f"threads={torch.get_num_threads()}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"numpy {np.__version__}",
    ]
    if is_offline():
        parts.append("offline")
    return " | ".join(parts)
