"""Checkpoints: a state dict plus the model's class and config, written atomically and read back
with ``torch.load(..., weights_only=True)`` (no pickled code is ever executed on loading).

A checkpoint names the classes to rebuild (``"helpers.model:GPT"`` and ``"helpers.model:TransformerConfig"``).
:func:`load_checkpoint` imports only what is safe to call with the file's values: a class of the
``helpers`` package that is an ``nn.Module``, built from a dataclass config of the ``helpers`` package.
Anything else named by a file (a function, a class of another package, a module merely called
``helpers_something``) is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path

import torch
from torch import nn

from .data import checkpoints_dir
from .distributed import is_main_process
from .files import atomic_write


class CheckpointError(ValueError):
    """A checkpoint file that does not describe a model of the helpers package."""


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


def _resolve(qualified, kind: str) -> type:
    """The class a checkpoint names as ``"module:Class"``: ``kind`` is "model" (an ``nn.Module``
    subclass) or "config" (a dataclass); both must belong to the helpers package."""
    module, _, name = str(qualified).partition(":")
    refuse = f"checkpoint names {qualified!r} as its {kind} class"
    if not (module == "helpers" or module.startswith("helpers.")) or not name.isidentifier():
        raise CheckpointError(f"{refuse}, which is not a class of the helpers package; refusing to load it")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{refuse}, which does not exist in this version of helpers ({err})") from err
    if not isinstance(obj, type) or not obj.__module__.startswith("helpers"):
        raise CheckpointError(f"{refuse}, which is not a class defined in helpers; refusing to load it")
    if kind == "model" and not issubclass(obj, nn.Module):
        raise CheckpointError(f"{refuse}, which is not a torch.nn.Module; refusing to load it")
    if kind == "config" and not dataclasses.is_dataclass(obj):
        raise CheckpointError(f"{refuse}, which is not a dataclass config; refusing to load it")
    return obj


def save_checkpoint(model: nn.Module, name_or_path, **extra) -> Path:
    """Save ``model`` (which must have a dataclass ``.config``) and JSON-like ``extra`` values.

    The file is written to a temporary name in the same folder and renamed into place, so a crash
    never leaves a half-written checkpoint. In a distributed run only the main process writes.
    """
    path = checkpoint_path(name_or_path)
    if not is_main_process():
        return path
    config = model.config
    payload = {
        "class": _qualified(model),
        "config_class": _qualified(config),
        "config": dataclasses.asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(name_or_path, map_location="cpu") -> nn.Module:
    """Rebuild the saved model in eval mode, on the device ``map_location`` (default: the CPU; e.g.
    ``helpers.get_device()``); ``model.checkpoint_extra`` holds the saved extras."""
    path = checkpoint_path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; run the notebook that trains it first")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or not {"class", "config_class", "config", "state_dict"} <= payload.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by helpers.save_checkpoint")
    config_class = _resolve(payload["config_class"], "config")
    model_class = _resolve(payload["class"], "model")
    model = model_class(config_class(**payload["config"]))
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)  # the model lives where its state dict was loaded
    model.load_state_dict(payload["state_dict"])
    model.checkpoint_extra = payload.get("extra", {})
    return model.eval()
