"""Checkpoints: a state dict plus the model's class and config, written atomically and read back
with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed on loading)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .config import is_main_process
from .data import checkpoints_dir


def checkpoint_path(name_or_path: str | os.PathLike) -> Path:
    """``"03_language_modelling"`` -> ``$TFS_DATA_DIR/checkpoints/03_language_modelling.pt``;
    anything that looks like a path is used as it is."""
    text = str(name_or_path)
    if os.sep in text or "/" in text or text.endswith(".pt"):
        return Path(text)
    return checkpoints_dir() / f"{text}.pt"


def _qualified(obj) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve(qualified: str):
    module, _, name = qualified.partition(":")
    if not module.startswith("helpers"):
        raise ValueError(f"checkpoint names class {qualified!r}, which is not part of helpers")
    return getattr(importlib.import_module(module), name)


def save_checkpoint(model: nn.Module, name_or_path, **extra) -> Path:
    """Save ``model`` (which must have a dataclass ``.config``) and JSON-like ``extra`` values.

    The file is written to a temporary name in the same folder and renamed into place, so a crash
    never leaves a half-written checkpoint. In a distributed run only rank 0 writes.
    """
    path = checkpoint_path(name_or_path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    payload = {
        "class": _qualified(model),
        "config_class": _qualified(config),
        "config": dataclasses.asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def load_checkpoint(name_or_path, map_location="cpu") -> nn.Module:
    """Rebuild the saved model in eval mode; ``model.checkpoint_extra`` holds the saved extras."""
    path = checkpoint_path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; run the notebook that trains it first")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    config = _resolve(payload["config_class"])(**payload["config"])
    model = _resolve(payload["class"])(config)
    model.load_state_dict(payload["state_dict"])
    model.checkpoint_extra = payload.get("extra", {})
    return model.eval()
