"""Attention: the einsum reference, masks, rotary positions, and multi-head attention with a fast path:
self-attention (optionally with fewer key/value heads than query heads, and rotary positions) and
cross-attention to a memory sequence.

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


def einsum_attention(q, k, v, mask=None, return_weights=False, scale=None):
    """Scaled dot-product attention written out with ``torch.einsum``, for teaching.

    q: (..., Tq, d), k: (..., Tk, d), v: (..., Tk, dv); mask: bool, broadcastable to (..., Tq, Tk),
    True where a query may attend to a key. ``scale``: what the scores are multiplied by (default
    1 / sqrt(d), as ``F.scaled_dot_product_attention``). Returns (..., Tq, dv) and, if asked, the weights.
    """
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = torch.einsum("...qd,...kd->...qk", q, k) * scale
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


def sliding_window_causal_mask(t_q: int, window: int, t_k: int | None = None, device=None) -> torch.Tensor:
    """(Tq, Tk) bool: the causal mask cut to a band of ``window`` keys: query i sees keys i - window + 1 .. i
    (itself and the ``window - 1`` before it), as Mistral's and Gemma's local layers (and ``transformers``'
    ``sliding_window_overlay``). Each query then reads at most ``window`` keys, however long the sequence,
    and a cache needs to keep only the last ``window`` positions; information still travels further, one
    window per layer. With ``t_k > t_q`` the queries are the last ``t_q`` positions, as in :func:`causal_mask`.

    >>> sliding_window_causal_mask(5, 3).int()
    tensor([[1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 1, 1]], dtype=torch.int32)
    """
    if int(window) != window or window < 1:
        raise ValueError(f"sliding window of {window} keys: it must be a whole number >= 1")
    t_k = t_q if t_k is None else t_k
    return causal_mask(t_q, t_k, device=device).triu(diagonal=t_k - t_q - window + 1)


def padding_mask(lengths, max_len: int | None = None) -> torch.Tensor:
    """(B, T) bool from sequence lengths: True for the first ``lengths[b]`` positions (real tokens)."""
    lengths = torch.as_tensor(lengths)
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def combine_masks(causal: bool, padding, t_q: int, t_k: int, device=None, window: int | None = None):
    """One bool mask (broadcastable to (B, H, Tq, Tk)) from a causal flag (cut to a sliding ``window`` of keys
    if one is given) and a (B, Tk) padding mask."""
    if causal:
        mask = causal_mask(t_q, t_k, device=device) if window is None else sliding_window_causal_mask(t_q, window, t_k, device)
    else:
        mask = None
    if padding is not None:
        keys = padding[:, None, None, :]  # (B, 1, 1, Tk)
        mask = keys if mask is None else mask & keys
    return mask


class KVCache:
    """Keys and values of the positions generated so far, one buffer per layer, and the keys and values
    of a memory (cross-attention), computed once.

    Buffers are allocated once, (B, H_kv, max_len, D) per layer, so each new token costs one write instead
    of a concatenation of the whole prefix (attention still reads every stored key). With grouped-query
    attention only the ``n_kv_head`` key/value heads are stored, not one per query head.
    """

    def __init__(self, n_layer, batch, n_head, max_len, head_dim, device=None, dtype=torch.float32):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.memory: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer  # cross-attention (k, v)
        self.max_len = max_len
        self.length = 0  # positions already stored; advanced by the model after all layers

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot store {end}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def numel(self) -> int:
        """Numbers held for the self-attention keys and values (all layers, all positions)."""
        return sum(t.numel() for t in self.k + self.v)


# --------------------------------------------------------------------------- rotary positions


def rope_angles(head_dim: int, n_positions: int, theta: float = 10000.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles of rotary position embeddings (RoPE, Su et al. 2021), each
    (n_positions, head_dim).

    Dimension i of the first half and dimension i + head_dim/2 form a pair, rotated at position t by the
    angle t * theta^(-2i / head_dim): fast for the first pairs, slow for the last (the "rotate-half" pairing
    of Hugging Face's Llama; llama.cpp pairs adjacent dimensions instead, the same rotation on reordered rows).
    """
    # in float32, as Hugging Face's Llama computes them, so that the two agree to the last bit
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)  # (D/2,)
    angles = torch.arange(n_positions, device=device).float()[:, None] * inv_freq  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D): the same angle for both members of a pair
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a quarter turn of every pair."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair of dimensions of queries or keys (B, H, T, D) by its position's angle:
    (T, D) cos and sin. A query at position m and a key at position n then have a dot product that
    depends on m - n only."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


# --------------------------------------------------------------------------- attention layers


class ResidualProjection(nn.Linear):
    """A ``Linear`` layer whose output is added to the residual stream (the last layer of attention and of
    the MLP). It computes what ``nn.Linear`` computes; its type lets the initialisation find it and scale
    it down (:func:`helpers.model.init_weights`)."""


class _Attention(nn.Module):
    """What self- and cross-attention share: heads, the output projection, and the attention itself,
    by ``F.scaled_dot_product_attention`` or, with ``store_weights = True`` (or
    :func:`helpers.model.collect_attention`), by the einsum reference, keeping the weights in ``self.weights``."""

    def __init__(self, d_model: int, n_head: int, n_kv_head: int | None, dropout: float, bias: bool, layer: int,
                 head_dim: int | None = None, scale: float | None = None):
        super().__init__()
        n_kv_head = n_kv_head or n_head
        if head_dim is None and d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        if n_head % n_kv_head:
            raise ValueError(f"n_head={n_head} is not a multiple of n_kv_head={n_kv_head}")
        self.n_head, self.n_kv_head, self.layer = n_head, n_kv_head, layer
        self.head_dim = head_dim or d_model // n_head  # Gemma: wider heads than d_model / n_head
        self.scale = scale  # the scores' factor; None: 1 / sqrt(head_dim)
        self.dropout = dropout
        self.store_weights = False
        self.weights = None

    def _output_layers(self, d_model: int, bias: bool):
        """The output projection, made after the input projections (so parameters are initialised in the
        order they are used): the heads side by side, n_head * head_dim, back to d_model."""
        self.proj = ResidualProjection(self.n_head * self.head_dim, d_model, bias=bias)
        self.resid_dropout = nn.Dropout(self.dropout)

    def attend(self, q, k, v, mask=None, is_causal=False) -> torch.Tensor:
        """q (B, H, Tq, D), k and v (B, H_kv, Tk, D) -> (B, Tq, H * D) through the output projection.
        Each group of H / H_kv query heads shares one key/value head."""
        if self.store_weights:
            if self.n_kv_head != self.n_head:  # the reference spells the sharing out: repeat each kv head
                k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
            if is_causal:
                mask = causal_mask(q.size(2), k.size(2), device=q.device)
            out, self.weights = einsum_attention(q, k, v, mask, return_weights=True, scale=self.scale)
        elif q.size(2) == 1 and mask is None and self.n_kv_head != self.n_head:
            # One query per head (a generation step): the queries of a group all attend to the same keys, so they
            # can go in as one kv head's queries, (B, H_kv, group, D), the fastest way to run this on a CPU.
            B, H, _, D = q.shape
            out = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_head, H // self.n_kv_head, D), k, v,
                                                 dropout_p=self.dropout if self.training else 0.0,
                                                 scale=self.scale).view(B, H, 1, D)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                                 dropout_p=self.dropout if self.training else 0.0,
                                                 enable_gqa=self.n_kv_head != self.n_head, scale=self.scale)
        B, H, T, D = out.shape
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(B, T, H * D)))  # heads side by side


class MultiHeadAttention(_Attention):
    """Multi-head self-attention: one projection to queries, keys and values, ``n_head`` heads in
    parallel, and an output projection. Fast path: ``F.scaled_dot_product_attention``.

    ``n_kv_head`` < ``n_head`` is grouped-query attention (GQA, Ainslie et al. 2023): fewer key/value
    heads, each shared by ``n_head / n_kv_head`` query heads, so the KV cache shrinks by that factor.
    ``rope=(cos, sin)`` rotates queries and keys by their positions (rotary embeddings) before the cache
    stores them.

    Options of Gemma 3, off by default: ``head_dim`` (heads of another size than d_model / n_head),
    ``window`` (sliding-window attention: each query sees itself and the ``window - 1`` keys before it,
    :func:`sliding_window_causal_mask`), ``qk_norm`` (a function making a norm over ``head_dim``: every query
    and key head is normalised before RoPE, QK-norm) and ``scale`` (the scores' factor, 1 / sqrt(head_dim)
    by default).
    """

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0, bias: bool = True, layer: int = 0,
                 n_kv_head: int | None = None, head_dim: int | None = None, window: int | None = None,
                 qk_norm=None, scale: float | None = None):
        super().__init__(d_model, n_head, n_kv_head, dropout, bias, layer, head_dim, scale)
        if window is not None and (int(window) != window or window < 1):
            raise ValueError(f"sliding window of {window} keys: it must be a whole number >= 1")
        self.window = window
        # one matrix for all three: (n_head + 2 * n_kv_head) * head_dim outputs, queries first
        self.qkv = nn.Linear(d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=bias)
        if qk_norm is not None:
            self.q_norm, self.k_norm = qk_norm(self.head_dim), qk_norm(self.head_dim)
        self._output_layers(d_model, bias)

    def forward(self, x, *, causal: bool = False, padding_mask=None, cache: KVCache | None = None, rope=None):
        B, T, _ = x.shape
        H, H_kv = self.n_head, self.n_kv_head
        heads = self.qkv(x).view(B, T, H + 2 * H_kv, self.head_dim).transpose(1, 2)  # (B, H + 2 H_kv, T, D)
        qk, v = heads.split([H + H_kv, H_kv], dim=1)  # the query and key heads, then the value heads
        if hasattr(self, "q_norm"):  # QK-norm: each head's query and key to a fixed size, then RoPE
            q, k = qk.split([H, H_kv], dim=1)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=1)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # queries and keys are rotated alike: in one go
        q, k = qk.split([H, H_kv], dim=1)  # (B, H, T, D), (B, H_kv, T, D)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H_kv, T_past + T, D)
        t_k = k.size(2)
        window = self.window if causal and self.window is not None and self.window < t_k else None
        if window is not None and T == 1 and padding_mask is None:
            k, v, t_k, window = k[:, :, -window:], v[:, :, -window:], window, None  # one query: its window's keys
        if causal and padding_mask is None and t_k == T and window is None:
            return self.attend(q, k, v, is_causal=True)
        # A single query with a cache sees every stored key: no causal mask needed.
        return self.attend(q, k, v, mask=combine_masks(causal and (T > 1 or window is not None), padding_mask, T,
                                                       t_k, device=x.device, window=window))


class CrossAttention(_Attention):
    """Cross-attention: queries from the sequence ``x`` (B, T, C), keys and values from a memory
    (B, S, C) of another length, e.g. the encoder's states in an encoder-decoder, or a condition.
    ``memory_mask`` (B, S) is True for real memory positions. During generation the memory's keys and
    values are computed once and kept in the cache (``cache.memory``)."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0, bias: bool = True, layer: int = 0):
        super().__init__(d_model, n_head, None, dropout, bias, layer)
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=bias)
        self._output_layers(d_model, bias)

    def forward(self, x, memory, *, memory_mask=None, cache: KVCache | None = None):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        if cache is not None and cache.memory[self.layer] is not None:
            k, v = cache.memory[self.layer]
        else:
            S = memory.size(1)
            k, v = self.kv(memory).view(B, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, S, D)
            if cache is not None:
                cache.memory[self.layer] = (k, v)
        mask = memory_mask[:, None, None, :] if memory_mask is not None else None  # (B, 1, 1, S)
        return self.attend(q, k, v, mask=mask)
