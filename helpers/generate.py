"""Autoregressive generation with a key-value cache, and the sampling strategies.

With the cache each new token runs the model on one position and attends to the stored keys and
values of the prefix, instead of re-running the whole prefix.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ResidualProjection
from .config import draw
from .lora import LoRALinear
from .model import GPT, evaluating


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the ``top_k`` largest and outside the nucleus of
    probability ``top_p`` (the smallest set of tokens whose probabilities add up to ``top_p``)."""
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p (the best is always kept).
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """(B, V) logits -> (B, 1) token ids, on the logits' device. Temperature 0 is greedy decoding (the arg-max).

    ``generator`` may live on another device than the logits (a CPU generator for a model on a GPU, as a
    notebook seeds one): the uniform numbers are then drawn on the generator's device and moved, and each
    token is found where its cumulative probability passes them (inverse-CDF sampling), on the logits' device.
    On the same device ``torch.multinomial`` draws with the generator."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.float().softmax(-1)
    if generator is None or generator.device == probs.device:
        return torch.multinomial(probs, 1, generator=generator)
    return _inverse_cdf(probs, draw(torch.rand, (probs.size(0), 1), generator=generator, device=probs.device))


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, V) probabilities and (B, 1) uniform numbers in [0, 1) -> (B, 1) the first token whose cumulative
    probability exceeds u (never a token of probability zero)."""
    cdf = probs.cumsum(-1)  # (B, V)
    return (cdf <= u * cdf[:, -1:]).sum(-1, keepdim=True).clamp(max=probs.size(-1) - 1)


def _last_logits(model, x, **model_kwargs) -> torch.Tensor:
    """(B, V): the logits of the last position. Our GPT computes only those (``last_only``), another model
    (one that wraps a GPT, say) all of them."""
    if isinstance(model, GPT):
        return model(x, last_only=True, **model_kwargs)[:, -1]
    return model(x, **model_kwargs)[:, -1]


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    **model_kwargs,
) -> torch.Tensor:
    """Extend ids ``(B, T)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T + max_new_tokens)`` on the
    model's device (the prompt, and the tensors of ``model_kwargs``, are moved there first).

    Without the cache (or once the sequence outgrows ``block_size``) the model re-reads the last
    ``block_size`` tokens at every step. ``model_kwargs`` go to every call of the model, e.g.
    ``memory=`` and ``memory_mask=`` for a decoder with cross-attention (whose keys and values the cache
    computes once). ``generator`` may be a CPU generator whatever the model's device (see :func:`sample_next`).
    """
    device = next(model.parameters()).device
    idx = idx.to(device)
    model_kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_kwargs.items()}
    block = model.config.block_size
    total = idx.size(1) + max_new_tokens
    cache = model.new_cache(idx.size(0), max_len=min(total, block)) if use_cache and idx.size(1) < block else None
    with evaluating(model):
        logits = _last_logits(model, idx[:, -block:], cache=cache, **model_kwargs)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, nxt], dim=1)
            if i == max_new_tokens - 1:
                break
            if cache is not None and cache.length < cache.max_len:
                logits = _last_logits(model, nxt, cache=cache, **model_kwargs)  # one new position
            else:
                cache = None
                logits = _last_logits(model, idx[:, -block:], **model_kwargs)  # the whole (cropped) context again
    return idx


def stream(
    model: GPT,
    ids,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids=(),
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Generate after the prompt ``ids`` (a list of ints, or a (T,) or (1, T) tensor) one token at a time,
    with the key-value cache, yielding each new id as soon as it is chosen (greedy by default: temperature 0).

    Stops after ``max_new_tokens`` ids, at the first id in ``stop_ids`` (which is not yielded, e.g. ChatML's
    ``<|im_end|>``), or when the context (``block_size``) is full. The tokens are those of :func:`generate`
    with the same settings and generator. A prompt longer than the context is a ``ValueError`` at once."""
    prompt = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    block = model.config.block_size
    if prompt.size(1) == 0:
        raise ValueError("the prompt is empty: give at least one token id")
    if prompt.size(1) > block:
        raise ValueError(f"the prompt has {prompt.size(1)} tokens, longer than the model's context of {block}: "
                         "shorten it (keep its last tokens, or fewer retrieved passages)")
    stop = {int(i) for i in stop_ids}
    return _stream(model, prompt.to(next(model.parameters()).device), max_new_tokens, stop,
                   dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator))


def _stream(model, prompt, max_new_tokens, stop, sampling) -> Iterator[int]:
    n_new = min(max_new_tokens, model.config.block_size - prompt.size(1) + 1)  # the last token is never fed back
    cache = model.new_cache(1, max_len=prompt.size(1) + max(n_new - 1, 0))
    step = DecodeStep.for_model(model)

    def next_logits(x):  # eval mode and no gradients for this call only: a generator must not leave them
        with evaluating(model):  # switched while it waits between tokens (the caller's code runs then)
            if step is not None and cache.length > 0:
                return step(x, cache)
            return _last_logits(model, x, cache=cache)

    logits = next_logits(prompt)  # the whole prompt in one pass ("prefill")
    for i in range(n_new):
        nxt = sample_next(logits, **sampling)  # (1, 1)
        if int(nxt) in stop:
            return
        yield int(nxt)
        if i < n_new - 1:
            logits = next_logits(nxt)  # one new position


# --------------------------------------------------------------------------- one token, fast


class DecodeStep:
    """One generation step of a :class:`GPT` (one new position, batch 1, with its cache) in fewer operations:
    the same arithmetic as ``model(x, cache=cache, last_only=True)``, in the same order, so the logits are the
    same to the last bit in float32 (``tests/test_llm.py`` checks it).

    A step of a small model on a CPU is bound by reading every weight matrix once and by the fixed cost of each
    operation PyTorch launches (a few microseconds each, ~60 per block in the model's general forward: module
    calls, masks, shape checks, views). Here the weights are gathered once, and a block is ~20 operations.
    In bfloat16 the weight matrices are also reordered once into oneDNN's blocked layout
    (``torch.ops.mkldnn._reorder_linear_weight``), which a one-row product reads faster than PyTorch's own
    bfloat16 path; the results are those of ``F.linear``.

    :meth:`for_model` returns ``None`` for a model it cannot run (cross-attention, post-norm blocks, attention
    maps being recorded, a layer that is not a ``Linear`` or LoRA's ``LoRALinear``...): :func:`stream` then
    uses the model's forward. Forward hooks on the blocks are not called here.
    """

    _built: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (weights' versions, step)

    @classmethod
    def for_model(cls, model) -> DecodeStep | None:
        if not (isinstance(model, GPT) and cls._supported(model)):
            return None
        versions = tuple((id(p), p._version) for p in model.parameters())  # in-place updates bump _version
        built = cls._built.get(model)
        if built is None or built[0] != versions:  # new weights (fine-tuning, load_state_dict): gather again
            built = versions, cls(model)
            cls._built[model] = built
        return built[1]

    @staticmethod
    def _supported(model: GPT) -> bool:
        cfg = model.config
        linears = [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)]
        # the layer classes whose forward is what the step calls: Linear, or LoRA's frozen Linear plus B @ A
        gemma = (cfg.sliding_window, cfg.rope_theta_local, cfg.qk_norm, cfg.sandwich_norm, cfg.embed_scale,
                 cfg.attn_scale, cfg.d_head, cfg.mlp == "geglu")  # Gemma 3's options: the model's forward runs them
        return (cfg.norm_first and not cfg.cross_attention and model.wte is not None and not any(gemma)
                and not any(b.attn.store_weights for b in model.blocks)
                and all(type(m) in (nn.Linear, ResidualProjection, LoRALinear) for m in [*linears, model.head]))

    def __init__(self, model: GPT):
        cfg = model.config  # the model's pieces, not the model: the cache above must not keep a model alive
        self.wte, self.wpe = model.wte.weight, model.wpe
        self.pack = (self.wte.dtype == torch.bfloat16 and self.wte.device.type == "cpu"
                     and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        self.blocks = [(self._norm(b.ln1), self._linear(b.attn.qkv), self._linear(b.attn.proj), self._norm(b.ln2),
                        self._linear(b.mlp.fc), b.mlp.act, self._linear(b.mlp.proj)) for b in model.blocks]
        self.ln_f, self.head = self._norm(model.ln_f), self._linear(model.head)
        self.heads = (cfg.n_head, cfg.n_kv_head or cfg.n_head, cfg.head_dim)
        self.gated = cfg.mlp == "swiglu"
        self.rope = None
        if model.wpe is None:  # rotary angles, cast once: cos, and sin with the sign of rotate_half folded in
            half = cfg.head_dim // 2
            cos, sin = model.rope_cos, model.rope_sin  # (block_size, D)
            self.rope = (cos.to(self.wte.dtype), torch.cat([-sin[:, :half], sin[:, half:]], -1).to(self.wte.dtype))

    @staticmethod
    def _norm(layer: nn.Module):
        """``x -> layer(x)`` for a norm layer: its forward, without the module call around it."""
        return layer.forward

    def _linear(self, layer: nn.Module):
        """``x -> layer(x)`` with the least work: F.linear on the weight (packed once in bfloat16)."""
        if type(layer) not in (nn.Linear, ResidualProjection):
            return layer  # e.g. a LoRALinear: its own forward
        weight, bias = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
        if self.pack:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
            return lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
        return lambda x: F.linear(x, weight, bias)

    def __call__(self, token: torch.Tensor, cache) -> torch.Tensor:
        """token (1, 1) -> the next position's logits (1, V); stores its keys and values in ``cache``."""
        H, H_kv, D = self.heads
        p = cache.length
        if p >= cache.max_len:  # checked before anything is stored
            raise ValueError(f"KV cache holds {cache.max_len} positions; cannot store {p + 1}")
        x = F.embedding(token.view(1), self.wte)  # (1, C)
        if self.wpe is not None:  # learned positions, or rotary angles: (D,) cos and signed sin of position p
            x = x + self.wpe.weight[p]
        else:
            cos, sin = self.rope[0][p], self.rope[1][p]
        for layer, (ln1, qkv, attn_proj, ln2, fc, act, proj) in enumerate(self.blocks):
            heads = qkv(ln1(x)).view(H + 2 * H_kv, D)  # (H + 2 H_kv, D): one position
            qk, v = heads[: H + H_kv], heads[H + H_kv :]
            if self.rope is not None:  # apply_rope: rotate_half(qk) * sin is the halves swapped, times signed sin
                qk = qk * cos + qk.roll(D // 2, -1) * sin
            keys, values = cache.k[layer][0], cache.v[layer][0]  # (H_kv, max_len, D): written in place
            keys[:, p], values[:, p] = qk[H:], v
            q = qk[:H].view(1, H_kv, H // H_kv, D)  # a group's queries all read one kv head
            out = F.scaled_dot_product_attention(q, keys[None, :, : p + 1], values[None, :, : p + 1])  # (1, H_kv, group, D)
            x = x + attn_proj(out.reshape(1, H * D))  # heads side by side
            h = fc(ln2(x))
            if self.gated:
                gate, up = h.chunk(2, dim=-1)
                h = act(gate) * up
            else:
                h = act(h)
            x = x + proj(h)
        cache.length = p + 1
        return self.head(self.ln_f(x))  # (1, V)


def show_stream(pieces, prefix: str = "") -> str:
    """Show text pieces as they arrive and return the whole text. In Jupyter one output grows in place (a display
    updated with each piece), so a saved notebook holds the text once, not one line per token; elsewhere each
    piece is printed as it comes."""
    text = prefix
    try:
        from IPython import get_ipython
        from IPython.display import Pretty, display
    except ImportError:
        get_ipython = lambda: None  # noqa: E731
    if get_ipython() is None or not hasattr(get_ipython(), "kernel"):
        print(prefix, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
            text += piece
        print()
        return text
    handle = display(Pretty(text), display_id=True)
    for piece in pieces:
        text += piece
        handle.update(Pretty(text))
    return text
