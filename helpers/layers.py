"""The layers of the shared transformer's block that act on each position alone: the norms (LayerNorm,
Llama's RMSNorm, Gemma's RMSNorm with the gain ``1 + w``), the MLP (plain, SwiGLU, GeGLU) and adaLN-Zero's
modulation (DiT). Each is built from a :class:`helpers.model.TransformerConfig`; ``helpers.model`` imports
them all, so ``from helpers.model import RMSNorm`` works as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ResidualProjection

_ACTIVATIONS = {  # name -> a function making a fresh module, so no two MLPs share one instance
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
}
NORMS = ("layernorm", "rmsnorm", "rmsnorm_plus1")
MLPS = ("plain", "swiglu", "geglu")


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` computed in Llama's order: normalised in float32, rounded to the input's dtype, then
    scaled by the gain. In float32 that is exactly ``nn.RMSNorm``; in bfloat16 the two roundings differ, and this
    order is Meta's and Hugging Face's, so that our Llama gives their tokens in bfloat16 too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm without a gain is h * rsqrt(mean(h^2) + eps), in fewer operations than written out
        return self.weight * F.rms_norm(x.float(), self.normalized_shape, eps=self.eps).to(x.dtype)


class RMSNormPlus1(nn.Module):
    """Gemma's RMSNorm: the gain is ``1 + w``, with ``w`` stored starting at zero (so weight decay pulls the gain
    towards 1, not 0), computed as Gemma does: normalised and scaled in float32, then rounded to the input's dtype.
    Hugging Face's Gemma checkpoints store ``w``; llama.cpp's converter adds the 1 before writing a GGUF file, so
    GGUF norms hold ``1 + w`` (``transformers`` subtracts 1 again when it reads one)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


def make_norm(cfg, dim: int | None = None) -> nn.Module:
    """LayerNorm (centre, scale, shift), RMSNorm (scale by the root mean square only, as Llama) or Gemma's
    RMSNorm with the gain ``1 + w``, over ``dim`` features (default ``n_embd``). With ``adaln`` a LayerNorm
    without parameters: the conditioning vector supplies the scale and the shift."""
    dim = dim or cfg.n_embd
    if cfg.adaln:
        return nn.LayerNorm(dim, eps=cfg.layer_norm_eps, elementwise_affine=False)
    if cfg.norm in ("rmsnorm", "rmsnorm_plus1"):
        return (RMSNorm if cfg.norm == "rmsnorm" else RMSNormPlus1)(dim, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(dim, eps=cfg.layer_norm_eps, bias=cfg.bias)


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, non-linearity, project back.

    ``mlp="swiglu"`` (Shazeer 2020; Llama): two widening maps, one through SiLU gating the other,
    ``proj(silu(x W_gate) * x W_up)``; ``fc`` holds both matrices stacked (gate first), one multiply.
    ``mlp="geglu"`` (Gemma): the same with GELU's tanh approximation as the gate's non-linearity.
    """

    def __init__(self, cfg):
        super().__init__()
        self.gated = cfg.mlp in ("swiglu", "geglu")
        self.fc = nn.Linear(cfg.n_embd, cfg.ff_width * (2 if self.gated else 1), bias=cfg.bias)
        if cfg.mlp == "geglu":
            self.act = nn.GELU(approximate="tanh")
        else:
            self.act = nn.SiLU() if self.gated else _ACTIVATIONS[cfg.activation]()
        self.proj = ResidualProjection(cfg.ff_width, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.dropout(self.proj(self.act(gate) * up))
        return self.dropout(self.proj(self.act(h)))


class ZeroLinear(nn.Linear):
    """A ``Linear`` that :func:`init_weights` initialises to zero: adaLN-Zero's map from the conditioning vector
    to shifts, scales and gates (every gate starts closed, so every block starts as the identity), and its
    final layer (the model starts by predicting zeros)."""


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, T, C) normalised, shift and scale (B, C): ``x * (1 + scale) + shift`` at every position."""
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNFinal(nn.Module):
    """adaLN-Zero's output layer: the (normalised) states (B, T, C) shifted and scaled by the condition
    (B, C), then mapped to ``n_out`` per position; both maps start at zero, so the output starts at zero."""

    def __init__(self, cfg, n_out: int):
        super().__init__()
        self.ada = nn.Sequential(nn.SiLU(), ZeroLinear(cfg.n_embd, 2 * cfg.n_embd))
        self.out = ZeroLinear(cfg.n_embd, n_out)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(cond).chunk(2, dim=-1)  # (B, C) each
        return self.out(modulate(h, shift, scale))  # (B, T, n_out)
