"""LoRA (low-rank adaptation; Hu et al. 2021): fine-tune a large frozen model through small updates.

A frozen linear layer ``y = x W^T`` (W: out x in) gets a trainable update of rank ``r``::

    y = x W^T + (alpha / r) * x A^T B^T        A: (r, in), B: (out, r), r << in, out

Only A and B train: ``r * (in + out)`` numbers instead of ``in * out``. B starts at zero, so the adapted
model starts exactly equal to the base model; A starts random (as ``nn.Linear``'s weights, and as the peft
library initialises it), so the gradient of B is not zero. After training the update can be **merged**:
``W + (alpha / r) B A`` is one ordinary matrix, and the adapted model costs nothing extra to run.

    adapters = LoRAAdapters.for_model(model, layers=range(26, 30), r=8, alpha=16)
    adapters.attach(model)     # every weight of model frozen; the chosen Linear layers become LoRALinear
    fit(model, ...)            # trains A and B only
    save_checkpoint(adapters, "09_modern_llm")   # a few hundred kB: the adapters, not the model
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

# The linear layers of one of our blocks (helpers.model.Block) that LoRA adapts by default: all of them.
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


class LoRA(nn.Module):
    """The low-rank update of one linear layer: ``x -> (alpha / r) * x A^T B^T``, (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        self.A = nn.Parameter(torch.empty(r, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, r))  # zero: the update starts at nothing
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear's weight (and peft's lora_A)
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.A.T) @ self.B.T * self.scale  # (..., r) in between: cheap

    def delta_weight(self) -> torch.Tensor:
        """The update as one (out, in) matrix: ``(alpha / r) * B @ A``, of rank at most r."""
        return self.scale * (self.B @ self.A)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus its :class:`LoRA` update: ``base(x) + lora(x)``."""

    def __init__(self, base: nn.Linear, lora: LoRA):
        super().__init__()
        self.base, self.lora = base, lora
        self.in_features, self.out_features = base.in_features, base.out_features
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora(x)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """One linear layer (of the base layer's class) with weight ``W + (alpha / r) B A``: the same outputs
        (without dropout), at the cost of the base layer."""
        base = self.base
        out = type(base)(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        out.weight.copy_(base.weight + self.lora.delta_weight().to(base.weight.dtype))
        if base.bias is not None:
            out.bias.copy_(base.bias)
        out.requires_grad_(False)
        return out


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: dict[str, list[int]] = field(default_factory=dict)  # layer name -> [in_features, out_features]


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class LoRAAdapters(nn.Module):
    """The LoRA updates of one model, by the name of the layer each adapts (``blocks.29.attn.qkv``).

    Its state dict holds only the A and B matrices, and its ``config`` (a :class:`LoRAConfig`) says which
    layers they adapt: that is all a fine-tuning run needs to save (``helpers.save_checkpoint(adapters, ...)``);
    loaded back (``helpers.load_checkpoint``), the adapters are attached to a freshly loaded base model."""

    def __init__(self, config: LoRAConfig):
        super().__init__()
        self.config = config
        self.updates = nn.ModuleDict({
            name.replace(".", "__"): LoRA(n_in, n_out, config.r, config.alpha, config.dropout)
            for name, (n_in, n_out) in config.targets.items()
        })  # fmt: skip

    @classmethod
    def for_model(cls, model: nn.Module, layers, kinds=BLOCK_LINEARS, r: int = 8, alpha: float = 16.0,
                  dropout: float = 0.0) -> LoRAAdapters:
        """Adapters for the linear layers ``kinds`` of the blocks ``layers`` of one of our models."""
        targets = {}
        for i in layers:
            for kind in kinds:
                name = f"blocks.{i}.{kind}"
                layer = _get(model, name)
                if not isinstance(layer, nn.Linear):
                    raise TypeError(f"{name} is a {type(layer).__name__}, not an nn.Linear: LoRA adapts linear layers")
                targets[name] = [layer.in_features, layer.out_features]
        return cls(LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=targets))

    def named_updates(self):
        for key, lora in self.updates.items():
            yield key.replace("__", "."), lora

    def attach(self, model: nn.Module) -> nn.Module:
        """Freeze every weight of ``model`` and wrap each target layer in a :class:`LoRALinear` sharing these
        adapters' A and B (so training the model trains the adapters). Returns ``model``."""
        model.requires_grad_(False)
        for name, lora in self.named_updates():
            layer = _get(model, name)
            if isinstance(layer, LoRALinear):
                raise ValueError(f"{name} already has a LoRA update attached")
            if [layer.in_features, layer.out_features] != self.config.targets[name]:
                raise ValueError(f"{name} is {layer.in_features} -> {layer.out_features}, the adapter "
                                 f"{self.config.targets[name]}")
            lora.to(device=layer.weight.device, dtype=layer.weight.dtype)
            lora.requires_grad_(True)
            _set(model, name, LoRALinear(layer, lora))
        return model

    def detach(self, model: nn.Module) -> nn.Module:
        """Put the base layers back (the model is the base model again; its weights stay frozen)."""
        for name, _ in self.named_updates():
            _set(model, name, _get(model, name).base)
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        """Replace each adapted layer by one plain linear layer with the update added to its weight."""
        for name, _ in self.named_updates():
            _set(model, name, _get(model, name).merged())
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
