"""The shared transformer: a pre-LayerNorm block, a decoder-only ``GPT`` and a bidirectional
``Encoder`` with a class token, both configured by one dataclass.

Both models take either token ids ``(B, T)`` (int64, embedded by the model) or ready-made input
embeddings ``(B, T, n_embd)`` (float: image patches, audio frames, notes... embedded by the task),
so that a task swaps only its input embedding and its output head.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, MultiHeadAttention


@dataclass
class TransformerConfig:
    vocab_size: int | None = None  # None: the inputs are ready-made embeddings
    block_size: int = 256  # the longest sequence (number of learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    d_ff: int | None = None  # MLP width; default 4 * n_embd
    dropout: float = 0.0
    bias: bool = True
    norm_first: bool = True  # pre-LayerNorm (GPT-2); False: post-LayerNorm (the 2017 paper, BERT)
    activation: str = "gelu"  # "gelu" (exact), "gelu_tanh" (GPT-2's approximation) or "relu"
    layer_norm_eps: float = 1e-5
    n_out: int | None = None  # size of the output head; GPT: default vocab_size, Encoder: classes
    tie_weights: bool = True  # GPT: output head shares the token embedding matrix
    cls_token: bool = True  # Encoder: prepend a learned class token and classify from it
    type_vocab_size: int = 0  # Encoder: BERT's segment embeddings
    embed_norm: bool = False  # Encoder: LayerNorm after the embeddings (BERT)

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.n_embd


_ACTIVATIONS = {
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "relu": nn.ReLU(),
}


class MLP(nn.Module):
    """Position-wise feed-forward network: widen, non-linearity, project back."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.ff_width, bias=cfg.bias)
        self.act = _ACTIVATIONS[cfg.activation]
        self.proj = nn.Linear(cfg.ff_width, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Attention then MLP, each wrapped in a residual connection and a LayerNorm."""

    def __init__(self, cfg: TransformerConfig, layer: int = 0):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.ln1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, layer=layer)
        self.ln2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, *, causal=False, padding_mask=None, cache=None):
        if self.norm_first:  # x + f(LN(x)): the residual stream is never normalised
            x = x + self.attn(self.ln1(x), causal=causal, padding_mask=padding_mask, cache=cache)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, causal=causal, padding_mask=padding_mask, cache=cache))
        return self.ln2(x + self.mlp(x))


def _init_weights(model: nn.Module, n_layer: int):
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and residual projections scaled
    by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
    for name, p in model.named_parameters():
        if name.endswith("proj.weight"):
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
        elif p.dim() >= 2 or "wte" in name or "wpe" in name or name.endswith("cls"):
            nn.init.normal_(p, 0.0, 0.02)
        elif name.endswith(".bias") and "ln" not in name and "norm" not in name:
            nn.init.zeros_(p)


class _Transformer(nn.Module):
    """What GPT and Encoder share: embeddings of ids, learned positions, the blocks."""

    def __init__(self, cfg: TransformerConfig, n_positions: int):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd) if cfg.vocab_size else None
        self.wpe = nn.Embedding(n_positions, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer=i) for i in range(cfg.n_layer))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> (B, T, C) through the embedding table; float inputs pass through."""
        if x.is_floating_point():
            if x.size(-1) != self.config.n_embd:
                raise ValueError(f"input embeddings have width {x.size(-1)}, the model {self.config.n_embd}")
            return x
        if self.wte is None:
            raise ValueError("this model has no token embedding (vocab_size=None): pass float embeddings")
        return self.wte(x)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class GPT(_Transformer):
    """Decoder-only transformer: causal self-attention, so position t sees only positions <= t."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, cfg.block_size)
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        n_out = cfg.n_out or cfg.vocab_size
        self.head = nn.Linear(cfg.n_embd, n_out, bias=False) if n_out else nn.Identity()
        _init_weights(self, cfg.n_layer)
        if cfg.tie_weights and self.wte is not None and n_out == cfg.vocab_size:
            self.head.weight = self.wte.weight  # one matrix to read and write tokens

    def forward(self, x, *, cache: KVCache | None = None, padding_mask=None):
        """x: ids (B, T) or embeddings (B, T, C) -> (B, T, n_out) (logits over the vocabulary)."""
        h = self.embed(x)
        T = h.size(1)
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions is longer than block_size={self.config.block_size}")
        pos = torch.arange(start, start + T, device=h.device)
        h = self.drop(h + self.wpe(pos))
        for block in self.blocks:
            h = block(h, causal=True, padding_mask=padding_mask, cache=cache)
        if cache is not None:
            cache.length += T
        return self.head(self.ln_f(h))

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        cfg = self.config
        param = next(self.parameters())
        return KVCache(
            cfg.n_layer, batch, cfg.n_head, max_len or cfg.block_size, cfg.n_embd // cfg.n_head,
            device=device or param.device, dtype=dtype or param.dtype,
        )


class Encoder(_Transformer):
    """Bidirectional transformer: every position sees every other (except padding).

    With ``cls_token`` a learned vector is prepended and the output head reads it: a summary of
    the whole sequence. Without it, :meth:`features` gives per-token states (as BERT does).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, cfg.block_size + int(cfg.cls_token))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.n_embd)) if cfg.cls_token else None
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size else None
        self.embed_ln = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps) if cfg.embed_norm else None
        # Pre-LN needs a final LayerNorm; post-LN blocks already end with one.
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias) if cfg.norm_first else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, cfg.n_out) if cfg.n_out else None
        _init_weights(self, cfg.n_layer)

    def features(self, x, *, padding_mask=None, token_type_ids=None):
        """x: ids (B, T) or embeddings (B, T, C) -> hidden states (B, T', C), T' = T + 1 with a class token.

        padding_mask: (B, T) bool, True for real positions; the class token is always real.
        """
        h = self.embed(x)
        B, T, _ = h.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} positions is longer than block_size={self.config.block_size}")
        if self.wtt is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(h[..., 0], dtype=torch.long)
            h = h + self.wtt(types)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(B, 1, -1), h], dim=1)
            if padding_mask is not None:
                padding_mask = F.pad(padding_mask, (1, 0), value=True)
        h = h + self.wpe(torch.arange(h.size(1), device=h.device))
        if self.embed_ln is not None:
            h = self.embed_ln(h)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, causal=False, padding_mask=padding_mask)
        return self.ln_f(h)

    def forward(self, x, *, padding_mask=None, token_type_ids=None):
        """With a class token: logits (B, n_out) read from it (or its state (B, C) without a head).
        Without one: the per-token states (B, T, C)."""
        h = self.features(x, padding_mask=padding_mask, token_type_ids=token_type_ids)
        if self.cls is None:
            return h
        pooled = h[:, 0]
        return self.head(pooled) if self.head is not None else pooled


def mean_pool(hidden: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real (unpadded) positions: (B, T, C), (B, T) -> (B, C)."""
    weights = padding_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@contextmanager
def collect_attention(model: nn.Module):
    """Record every attention layer's weights during the forward passes inside the ``with``.

    >>> with collect_attention(model) as maps:
    ...     model(x)
    >>> maps[0].shape   # layer 0: (B, H, Tq, Tk)
    """
    layers = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    maps: list[torch.Tensor] = []
    for m in layers:
        m.store_weights = True
    try:
        yield maps
    finally:
        for m in layers:
            m.store_weights = False
            if m.weights is not None:
                maps.append(m.weights.detach())
                m.weights = None
