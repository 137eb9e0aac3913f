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

Our blocks fuse queries, keys and values into one matrix (``attn.qkv``) and the gate and up projections into another
(``mlp.fc``); one update of rank r on a fused matrix is shared by its parts. ``peft`` on a Hugging Face Llama adapts the
separate ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``, each with its own
rank-r update: name the parts (``kinds=PEFT_LLAMA``, or some of them: ``["attn.q", "attn.v"]``) and each gets its own
(A, B) pair over its rows of the fused matrix (:class:`SlicedLoRA`), the same parameters and outputs as ``peft``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

# The linear layers of one of our blocks (helpers.model.Block) that LoRA adapts by default: all of them.
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
# peft's names on a Llama -> ours: q_proj attn.q, k_proj attn.k, v_proj attn.v, o_proj attn.proj, gate_proj mlp.gate,
# up_proj mlp.up, down_proj mlp.proj. attn.q, attn.k, attn.v are rows of attn.qkv; mlp.gate and mlp.up rows of mlp.fc.
PEFT_LLAMA = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.gate", "mlp.up", "mlp.proj")
_PARTS = {"attn.q": ("attn.qkv", 0), "attn.k": ("attn.qkv", 1), "attn.v": ("attn.qkv", 2),
          "mlp.gate": ("mlp.fc", 0), "mlp.up": ("mlp.fc", 1)}  # fmt: skip


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


class SlicedLoRA(nn.Module):
    """Separate low-rank updates of consecutive blocks of rows of one fused linear layer (queries, keys and values
    of ``attn.qkv``): ``sizes`` the rows of each part, ``adapted`` which parts get an update (a :class:`LoRA` of
    their own, in ``parts[str(k)]``); the others get none. (..., in) -> (..., sum(sizes))."""

    def __init__(self, in_features: int, sizes: list[int], adapted: list[bool], r: int = 8, alpha: float = 16.0,
                 dropout: float = 0.0):
        super().__init__()
        self.in_features, self.sizes, self.adapted = in_features, list(sizes), list(adapted)
        self.parts = nn.ModuleDict({str(k): LoRA(in_features, n, r, alpha, dropout)
                                    for k, (n, on) in enumerate(zip(sizes, adapted, strict=True)) if on})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.parts[str(k)](x) if on else x.new_zeros(*x.shape[:-1], n)
                          for k, (n, on) in enumerate(zip(self.sizes, self.adapted, strict=True))], dim=-1)

    def delta_weight(self) -> torch.Tensor:
        """The updates as one (sum(sizes), in) matrix, each part's ``(alpha / r) B A`` in its rows (zero elsewhere)."""
        return torch.cat([self.parts[str(k)].delta_weight() if on else self._zeros(n)
                          for k, (n, on) in enumerate(zip(self.sizes, self.adapted, strict=True))])

    def _zeros(self, n: int) -> torch.Tensor:
        A = next(iter(self.parts.values())).A
        return A.new_zeros(n, self.in_features)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus its :class:`LoRA` (or :class:`SlicedLoRA`) update: ``base(x) + lora(x)``."""

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
    # fused layers adapted by parts (SlicedLoRA): layer name -> [[rows, adapted], ...] of each part, in order
    slices: dict[str, list[list]] = field(default_factory=dict)


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _part_sizes(model: nn.Module, i: int, fused: str) -> list[int]:
    """The rows of each part of a fused layer of block ``i``: queries, keys, values; or gate, up."""
    block = model.blocks[i]
    if fused == "attn.qkv":
        a = block.attn
        return [a.n_head * a.head_dim, a.n_kv_head * a.head_dim, a.n_kv_head * a.head_dim]
    if not block.mlp.gated:
        raise ValueError(f"block {i}'s MLP has no gate: mlp.gate and mlp.up are parts of a gated MLP's fc")
    return [block.mlp.fc.out_features // 2] * 2


class LoRAAdapters(nn.Module):
    """The LoRA updates of one model, by the name of the layer each adapts (``blocks.29.attn.qkv``).

    Its state dict holds only the A and B matrices, and its ``config`` (a :class:`LoRAConfig`) says which
    layers they adapt: that is all a fine-tuning run needs to save (``helpers.save_checkpoint(adapters, ...)``);
    loaded back (``helpers.load_checkpoint``), the adapters are attached to a freshly loaded base model."""

    def __init__(self, config: LoRAConfig):
        super().__init__()
        self.config = config
        def update(name, n_in, n_out):
            if name not in config.slices:
                return LoRA(n_in, n_out, config.r, config.alpha, config.dropout)
            sizes, adapted = zip(*config.slices[name], strict=True)
            return SlicedLoRA(n_in, sizes, [bool(a) for a in adapted], config.r, config.alpha, config.dropout)

        self.updates = nn.ModuleDict({name.replace(".", "__"): update(name, n_in, n_out)
                                      for name, (n_in, n_out) in config.targets.items()})

    @classmethod
    def for_model(cls, model: nn.Module, layers, kinds=BLOCK_LINEARS, r: int = 8, alpha: float = 16.0,
                  dropout: float = 0.0) -> LoRAAdapters:
        """Adapters for the linear layers ``kinds`` of the blocks ``layers`` of one of our models. A kind is a layer
        (``attn.qkv``, ``mlp.fc``, ...: :data:`BLOCK_LINEARS`) or a part of a fused one, adapted on its own as
        ``peft`` adapts a Llama's separate projections (``attn.q``, ``attn.k``, ``attn.v``, ``mlp.gate``,
        ``mlp.up``: :data:`PEFT_LLAMA`); a layer is adapted whole or by parts, not both."""
        targets, slices = {}, {}
        for i in layers:
            for kind in kinds:
                fused, part = _PARTS.get(kind, (kind, None))
                name = f"blocks.{i}.{fused}"
                layer = _get(model, name)
                if not isinstance(layer, nn.Linear):
                    raise TypeError(f"{name} is a {type(layer).__name__}, not an nn.Linear: LoRA adapts linear layers")
                if (part is None) == (name in slices) and name in targets:
                    raise ValueError(f"{name} is named both whole ({fused}) and by its parts: choose one")
                targets[name] = [layer.in_features, layer.out_features]
                if part is not None:
                    sizes = _part_sizes(model, i, fused)
                    slices.setdefault(name, [[n, False] for n in sizes])[part][1] = True
        return cls(LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=targets, slices=slices))

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
