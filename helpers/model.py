"""The shared transformer: one block, a decoder-only ``GPT`` and a bidirectional ``Encoder`` with a
class token, all configured by one dataclass.

Both models take either token ids ``(B, T)`` (int64, embedded by the model) or ready-made input
embeddings ``(B, T, n_embd)`` (float: image patches, audio frames, notes... embedded by the task),
so that a task swaps only its input embedding and its output head.

One model, many architectures: the options of :class:`TransformerConfig` (each off by default, so that
a config without them builds the 2017-2019 transformer the course starts with) make the same code a
GPT-2, a BERT, the decoder of the original encoder-decoder (``cross_attention``), a Llama
(``norm="rmsnorm"``, ``positions="rope"``, ``mlp="swiglu"``, ``n_kv_head`` < ``n_head``, ``bias=False``), or a
Gemma 3: a Llama plus ``norm="rmsnorm_plus1"``, ``mlp="geglu"``, ``d_head``, ``sliding_window`` with
``global_every`` and ``rope_theta_local``, ``qk_norm``, ``sandwich_norm``, ``embed_scale`` (and ``attn_scale``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttention, KVCache, MultiHeadAttention, ResidualProjection, rope_angles
from .layers import (  # noqa: F401 (RMSNorm, RMSNormPlus1: re-exported)
    _ACTIVATIONS,
    MLP,
    MLPS,
    NORMS,
    AdaLNFinal,
    RMSNorm,
    RMSNormPlus1,
    ZeroLinear,
    make_norm,
    modulate,
)


@dataclass
class TransformerConfig:
    vocab_size: int | None = None  # None: the inputs are ready-made embeddings
    block_size: int = 256  # the longest sequence (number of positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    d_ff: int | None = None  # MLP width; default 4 * n_embd
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and the LayerNorms
    norm_first: bool = True  # pre-LayerNorm (GPT-2); False: post-LayerNorm (the 2017 paper, BERT)
    activation: str = "gelu"  # "gelu" (exact), "gelu_tanh" (GPT-2's approximation) or "relu"
    layer_norm_eps: float = 1e-5  # also RMSNorm's epsilon
    n_out: int | None = None  # size of the output head; GPT: default vocab_size, Encoder: classes
    tie_weights: bool = True  # GPT: output head shares the token embedding matrix
    cls_token: bool = True  # Encoder: prepend a learned class token and classify from it
    type_vocab_size: int = 0  # Encoder: BERT's segment embeddings
    embed_norm: bool = False  # Encoder: LayerNorm after the embeddings (BERT)
    # Modern options (Llama, Qwen, Mistral, SmolLM), and cross-attention; every one off by default.
    norm: str = "layernorm"  # "layernorm" or "rmsnorm" (no mean subtraction, no bias)
    positions: str = "learned"  # "learned" absolute embeddings, or "rope" (rotary, applied to queries and keys)
    rope_theta: float = 10000.0  # RoPE's base: the slowest pair turns once in about 2 pi theta positions
    mlp: str = "plain"  # "plain": proj(act(fc(x))); "swiglu": proj(silu(gate(x)) * up(x))
    n_kv_head: int | None = None  # grouped-query attention: key/value heads (None: n_head)
    cross_attention: bool = False  # GPT: each block also attends to a memory (encoder-decoder, conditioning)
    # Gemma 3's options, every one off by default; with norm="rmsnorm_plus1" (gain 1 + w) and mlp="geglu":
    d_head: int | None = None  # width of a head, if not n_embd / n_head (Gemma 3 270M: 4 heads of 256 in 640)
    sliding_window: int | None = None  # local layers: a query sees itself and the sliding_window - 1 keys before it
    global_every: int | None = None  # with sliding_window: layers k-1, 2k-1, ... are global (Gemma 3: k=6); None: none
    rope_theta_local: float | None = None  # RoPE's base on the local layers (Gemma 3: 10,000; global 1,000,000)
    qk_norm: bool = False  # a norm over head_dim on every query and key head, before RoPE
    sandwich_norm: bool = False  # also a norm on the outputs of attention and of the MLP: four norms per block
    embed_scale: bool = False  # token embeddings times sqrt(n_embd) (the factor rounded to the weights' dtype)
    attn_scale: float | None = None  # scores times attn_scale ** -0.5 (Gemma's query_pre_attn_scalar); None: head_dim
    # adaLN-Zero (DiT, Peebles & Xie 2022): each block's norms lose their gain and bias, and a vector `cond`
    # (B, C) sets a shift, a scale and a gate for attention and for the MLP; the gates start at zero
    adaln: bool = False

    def __post_init__(self):
        for name, allowed in (("norm", NORMS), ("positions", ("learned", "rope")), ("mlp", MLPS),
                              ("activation", tuple(_ACTIVATIONS))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; use one of {', '.join(allowed)}")
        for name, value in (("sliding_window", self.sliding_window), ("global_every", self.global_every),
                            ("d_head", self.d_head), ("attn_scale", self.attn_scale)):  # attn_scale: any number > 0
            if value is not None and (isinstance(value, bool) or not value > 0 or (name != "attn_scale" and value % 1)):
                raise ValueError(f"{name}={value!r}: a {'number > 0' if name == 'attn_scale' else 'whole number >= 1'}")
        if self.global_every is not None and self.sliding_window is None:
            raise ValueError("global_every says which layers are global among sliding-window ones: set sliding_window")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.d_head or self.n_embd // self.n_head

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of block ``layer`` (0-based), or None where it attends to every earlier key:
        with ``global_every=6``, blocks 5, 11, 17, ... are global (Gemma 3's ``layer_types``)."""
        if self.sliding_window is None or (self.global_every and (layer + 1) % self.global_every == 0):
            return None
        return self.sliding_window


def transformer_config(topic_config, **overrides) -> TransformerConfig:
    """A :class:`TransformerConfig` from a topic model's config: every field the two share by name
    (``n_layer``, ``n_head``, ``n_embd``, ``dropout``, ...) is copied, then ``overrides`` are applied.

    >>> transformer_config(PatchGPTConfig(n_layer=4), vocab_size=None, block_size=49)
    """
    names = {f.name for f in fields(TransformerConfig)}
    shared = {f.name: getattr(topic_config, f.name) for f in fields(topic_config) if f.name in names}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"TransformerConfig has no field(s) {sorted(unknown)}")
    return TransformerConfig(**{**shared, **overrides})


class Block(nn.Module):
    """Attention then MLP, each wrapped in a residual connection and a norm; with ``cross_attention``,
    cross-attention to a memory between them (the decoder block of the 2017 Transformer).

    ``sandwich_norm`` (Gemma 2 and 3): the outputs of attention and of the MLP are normalised too before they are
    added to the residual stream, ``x + post_attn_norm(attn(ln1(x)))``: four norms per block.

    With ``adaln`` (adaLN-Zero, pre-norm only) ``forward`` takes ``cond`` (B, C) and computes
    ``x + gate_a * attn(modulate(norm(x), shift_a, scale_a))``, then the same for the MLP; the six
    vectors come from ``ada(silu(cond))`` in the order shift, scale, gate (attention), shift, scale, gate (MLP)."""

    def __init__(self, cfg: TransformerConfig, layer: int = 0, cross_attention: bool = False):
        super().__init__()
        self.norm_first = cfg.norm_first
        if cfg.sandwich_norm and not cfg.norm_first:
            raise ValueError("sandwich_norm adds norms after attention and the MLP of pre-norm blocks: norm_first=True")
        self.window = cfg.layer_window(layer)
        self.ln1 = make_norm(cfg)
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, layer=layer,
                                       n_kv_head=cfg.n_kv_head, head_dim=cfg.d_head, window=self.window,
                                       qk_norm=(lambda dim: make_norm(cfg, dim)) if cfg.qk_norm else None,
                                       scale=None if cfg.attn_scale is None else cfg.attn_scale ** -0.5)
        if cfg.sandwich_norm:
            self.post_attn_norm = make_norm(cfg)
        if cross_attention:
            self.ln_cross = make_norm(cfg)
            self.cross = CrossAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias, layer=layer)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        if cfg.sandwich_norm:
            self.post_mlp_norm = make_norm(cfg)
        if cfg.adaln:
            if not cfg.norm_first or cross_attention:
                raise ValueError("adaln needs pre-norm blocks (norm_first=True) without cross-attention")
            self.ada = nn.Sequential(nn.SiLU(), ZeroLinear(cfg.n_embd, 6 * cfg.n_embd))

    def forward(self, x, *, causal=False, padding_mask=None, cache=None, rope=None, memory=None, memory_mask=None,
                cond=None):
        def attn(h):
            return self.attn(h, causal=causal, padding_mask=padding_mask, cache=cache, rope=rope)

        if hasattr(self, "ada"):  # adaLN-Zero: the condition (B, C) shifts, scales and gates both branches
            if cond is None:
                raise ValueError("this block is conditioned (adaln=True): pass cond=(B, C)")
            shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(cond).chunk(6, dim=-1)  # (B, C) each
            x = x + gate_a[:, None] * attn(modulate(self.ln1(x), shift_a, scale_a))
            return x + gate_m[:, None] * self.mlp(modulate(self.ln2(x), shift_m, scale_m))

        def cross(h):
            return self.cross(h, memory, memory_mask=memory_mask, cache=cache)

        has_cross = hasattr(self, "cross")
        if has_cross and memory is None and (cache is None or cache.memory[self.attn.layer] is None):
            raise ValueError("this block attends to a memory: pass memory=(B, S, C)")
        if hasattr(self, "post_attn_norm"):  # Gemma: norm before and after each of attention and the MLP
            x = x + self.post_attn_norm(attn(self.ln1(x)))
            if has_cross:
                x = x + cross(self.ln_cross(x))
            return x + self.post_mlp_norm(self.mlp(self.ln2(x)))
        if self.norm_first:  # x + f(norm(x)): the residual stream is never normalised
            x = x + attn(self.ln1(x))
            if has_cross:
                x = x + cross(self.ln_cross(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + attn(x))
        if has_cross:
            x = self.ln_cross(x + cross(x))
        return self.ln2(x + self.mlp(x))


def init_weights(model: nn.Module, n_layer: int):
    """GPT-2's initialisation, by module type: every ``Linear`` and ``Embedding`` weight from N(0, 0.02),
    biases zero, norms left at (1, 0). The projections that write into the residual stream (the output
    layers of attention and of the MLP) are scaled by 1/sqrt(2 * n_layer), so the stream's variance
    does not grow with depth. Modules are visited in the order of ``model.modules()``."""
    for module in model.modules():
        if isinstance(module, ZeroLinear):  # adaLN-Zero: gates closed, every block the identity
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * n_layer) if isinstance(module, ResidualProjection) else 0.02
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)


class _Transformer(nn.Module):
    """What GPT and Encoder share: embeddings of ids, positions (learned, or rotary angles), the blocks."""

    def __init__(self, cfg: TransformerConfig, n_positions: int, cross_attention: bool = False):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd) if cfg.vocab_size else None
        self.wpe = nn.Embedding(n_positions, cfg.n_embd) if cfg.positions == "learned" else None
        if cfg.positions == "rope":  # not parameters: recomputed from the config, so not in the state dict
            cos, sin = rope_angles(cfg.head_dim, n_positions, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            if cfg.rope_theta_local is not None:  # another base for the sliding-window layers (Gemma 3)
                cos, sin = rope_angles(cfg.head_dim, n_positions, cfg.rope_theta_local)
                self.register_buffer("rope_cos_local", cos, persistent=False)
                self.register_buffer("rope_sin_local", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer=i, cross_attention=cross_attention) for i in range(cfg.n_layer))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> (B, T, C) through the embedding table; float inputs pass through."""
        if x.is_floating_point():
            if x.size(-1) != self.config.n_embd:
                raise ValueError(f"input embeddings have width {x.size(-1)}, the model {self.config.n_embd}")
            return x
        if self.wte is None:
            raise ValueError("this model has no token embedding (vocab_size=None): pass float embeddings")
        h = self.wte(x)
        if self.config.embed_scale:  # Gemma: the factor rounded to the weights' dtype first (bfloat16: 25.25 for 25.30)
            h = h * torch.tensor(self.config.n_embd**0.5, dtype=h.dtype)
        return h

    def add_positions(self, h: torch.Tensor, start: int = 0):
        """The embeddings plus their learned positions, and the rotary angles for attention (or None):
        positions ``start`` .. ``start + T - 1``."""
        T = h.size(1)
        if self.wpe is not None:
            return h + self.wpe(torch.arange(start, start + T, device=h.device)), None
        return h, (self.rope_cos[start : start + T], self.rope_sin[start : start + T])

    def block_ropes(self, rope, start: int, T: int) -> list:
        """Each block's rotary angles: ``rope``, or those of ``rope_theta_local`` on the sliding-window blocks."""
        if rope is None or self.config.rope_theta_local is None:
            return [rope] * len(self.blocks)
        local = (self.rope_cos_local[start : start + T], self.rope_sin_local[start : start + T])
        return [rope if block.window is None else local for block in self.blocks]

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class GPT(_Transformer):
    """Decoder-only transformer: causal self-attention, so position t sees only positions <= t.

    With ``cross_attention`` every block also attends to a ``memory`` (B, S, C): the decoder of an
    encoder-decoder (:class:`helpers.seq2seq.EncoderDecoder`), or a model conditioned on something else.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg, cfg.block_size, cross_attention=cfg.cross_attention)
        self.ln_f = make_norm(cfg)
        n_out = cfg.n_out or cfg.vocab_size
        self.head = nn.Linear(cfg.n_embd, n_out, bias=False) if n_out else nn.Identity()
        init_weights(self, cfg.n_layer)
        if cfg.tie_weights and self.wte is not None and n_out == cfg.vocab_size:
            self.head.weight = self.wte.weight  # one matrix to read and write tokens

    def forward(self, x, *, cache: KVCache | None = None, padding_mask=None, memory=None, memory_mask=None,
                last_only: bool = False):
        """x: ids (B, T) or embeddings (B, T, C) -> (B, T, n_out) (logits over the vocabulary).

        memory (B, S, C) and memory_mask (B, S) (True = real) feed the cross-attention; with a cache the
        memory's keys and values are computed at the first call and reused after it. ``last_only``: the
        logits of the last position only, (B, 1, n_out), all that generation needs (for a long prompt and a
        large vocabulary the output layer is a good share of the work)."""
        h = self.embed(x)
        T = h.size(1)
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions is longer than block_size={self.config.block_size}")
        h, rope = self.add_positions(h, start)
        h = self.drop(h)
        for block, block_rope in zip(self.blocks, self.block_ropes(rope, start, T), strict=True):
            h = block(h, causal=True, padding_mask=padding_mask, cache=cache, rope=block_rope, memory=memory,
                      memory_mask=memory_mask)
        if cache is not None:
            cache.length += T
        return self.head(self.ln_f(h[:, -1:] if last_only else h))

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        """A key-value cache for ``batch`` sequences of up to ``max_len`` positions (only the
        ``n_kv_head`` key/value heads are stored)."""
        cfg = self.config
        param = next(self.parameters())
        return KVCache(
            cfg.n_layer, batch, cfg.n_kv_head or cfg.n_head, max_len or cfg.block_size, cfg.head_dim,
            device=device or param.device, dtype=dtype or param.dtype,
        )


class Encoder(_Transformer):
    """Bidirectional transformer: every position sees every other (except padding).

    ``forward`` always returns the per-token states ``(B, T', C)``. With ``cls_token`` a learned vector
    is prepended (T' = T + 1) and :meth:`pool` reads its state, a summary of the whole sequence;
    :meth:`classify` is forward, pool and the output head ``head`` in one call. Without a class token
    the states are the output (as BERT's, pooled by the task, e.g. :func:`mean_pool`).
    """

    def __init__(self, cfg: TransformerConfig):
        if cfg.sliding_window is not None:
            raise ValueError("sliding_window cuts a causal mask; an Encoder's attention is not causal")
        super().__init__(cfg, cfg.block_size + int(cfg.cls_token))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.n_embd)) if cfg.cls_token else None
        self.wtt = nn.Embedding(cfg.type_vocab_size, cfg.n_embd) if cfg.type_vocab_size else None
        self.embed_ln = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps) if cfg.embed_norm else None
        # Pre-LN needs a final norm; post-LN blocks already end with one.
        self.ln_f = make_norm(cfg) if cfg.norm_first else nn.Identity()
        self.head = nn.Linear(cfg.n_embd, cfg.n_out) if cfg.n_out else None
        if self.cls is not None:
            nn.init.normal_(self.cls, 0.0, 0.02)
        init_weights(self, cfg.n_layer)

    def forward(self, x, *, padding_mask=None, token_type_ids=None, cond=None):
        """x: ids (B, T) or embeddings (B, T, C) -> hidden states (B, T', C), T' = T + 1 with a class token
        (its state first).

        padding_mask: (B, T) bool, True for real positions; the class token is always real.
        cond: (B, C), the conditioning vector of adaLN-Zero blocks (``adaln=True``), e.g. a DiT's time and class.
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
        h, rope = self.add_positions(h)
        if self.embed_ln is not None:
            h = self.embed_ln(h)
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, causal=False, padding_mask=padding_mask, rope=rope, cond=cond)
        return self.ln_f(h)

    def pool(self, states: torch.Tensor) -> torch.Tensor:
        """The class token's state: (B, T', C) -> (B, C)."""
        if self.cls is None:
            raise ValueError("this Encoder has no class token (cls_token=False): pool its states yourself, "
                             "e.g. with helpers.mean_pool(states, padding_mask)")
        return states[:, 0]

    def classify(self, x, *, padding_mask=None, token_type_ids=None) -> torch.Tensor:
        """Logits (B, n_out) from the class token: ``head(pool(forward(x)))``."""
        if self.head is None:
            raise ValueError("this Encoder has no output head (n_out=None)")
        return self.head(self.pool(self(x, padding_mask=padding_mask, token_type_ids=token_type_ids)))


def mean_pool(hidden: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real (unpadded) positions: (B, T, C), (B, T) -> (B, C)."""
    weights = padding_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@contextmanager
def evaluating(model: nn.Module):
    """Run the ``with`` block with ``model`` in eval mode (no dropout, BatchNorm's running statistics)
    and without gradients; the model's previous mode is restored afterwards, also after an exception.

    >>> with evaluating(model):
    ...     logits = model(x)
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


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
