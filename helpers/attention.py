"""Attention: the einsum reference, masks, and multi-head attention with a fast path.

Mask convention, used everywhere in the course: a boolean mask is ``True`` where attention is
*allowed* (the convention of ``F.scaled_dot_product_attention``). A padding mask is ``True`` for
real tokens and ``False`` for padding. (``torch.nn.MultiheadAttention``'s ``key_padding_mask`` is
the opposite: ``True`` marks padding. Pass it ``~padding_mask``.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def einsum_attention(q, k, v, mask=None, return_weights=False):
    """Scaled dot-product attention written out with ``torch.einsum``, for teaching.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv); mask: bool, broadcastable to (..., Tq, Tk),
    True where a query may attend to a key. Returns (..., Tq, dv) and, if asked, the weights.
    """
    scores = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # each query's weights over the keys sum to 1
    out = torch.einsum("...qk,...kd->...qd", weights, v)
    return (out, weights) if return_weights else out


def causal_mask(t_q: int, t_k: int | None = None, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True on and below the diagonal: query i sees keys up to its own position.

    With ``t_k > t_q`` (a key-value cache holding ``t_k - t_q`` earlier positions) the queries are the
    last ``t_q`` positions.
    """
    t_k = t_q if t_k is None else t_k
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def padding_mask(lengths, max_len: int | None = None) -> torch.Tensor:
    """(B, T) bool from sequence lengths: True for the first ``lengths[b]`` positions (real tokens)."""
    lengths = torch.as_tensor(lengths)
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def combine_masks(causal: bool, padding, t_q: int, t_k: int, device=None):
    """One bool mask (broadcastable to (B, H, Tq, Tk)) from a causal flag and a (B, Tk) padding mask."""
    mask = causal_mask(t_q, t_k, device=device) if causal else None
    if padding is not None:
        keys = padding[:, None, None, :]  # (B, 1, 1, Tk)
        mask = keys if mask is None else mask & keys
    return mask


class KVCache:
    """Keys and values of the positions generated so far, one buffer per layer.

    Buffers are allocated once, (B, H, max_len, D) per layer, so each new token costs one write
    instead of a concatenation of the whole prefix.
    """

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device=None, dtype=torch.float32):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0  # positions already stored; advanced by the model after all layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot store {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: one projection to queries, keys and values, ``n_head`` heads in
    parallel, and an output projection. Fast path: ``F.scaled_dot_product_attention``.

    Set ``store_weights = True`` (or use :func:`helpers.model.collect_attention`) to run the einsum
    reference instead and keep the attention weights in ``self.weights`` for plotting.
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0, bias: bool = True, layer: int = 0):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head, self.head_dim, self.layer = n_head, d_model // n_head, layer
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.store_weights = False
        self.weights = None

    def forward(self, x, *, causal: bool = False, padding_mask=None, cache: KVCache | None = None):
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, H, T, D) tensors
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, T_past + T, D)
        t_k = k.size(2)

        if self.store_weights:
            mask = combine_masks(causal, padding_mask, T, t_k, device=x.device)
            out, self.weights = einsum_attention(q, k, v, mask, return_weights=True)
        else:
            p = self.dropout if self.training else 0.0
            if causal and padding_mask is None and t_k == T:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                # A single query with a cache sees every stored key: no mask needed.
                needs_causal = causal and T > 1
                mask = combine_masks(needs_causal, padding_mask, T, t_k, device=x.device)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

        out = out.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.proj(out))
