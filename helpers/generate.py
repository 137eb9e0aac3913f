"""Autoregressive generation with a key-value cache, and the sampling strategies.

With the cache each new token runs the model on one position and attends to the stored keys and
values of the prefix, instead of re-running the whole prefix.
"""

from __future__ import annotations

import torch

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
    """(B, V) logits -> (B, 1) token ids. Temperature 0 is greedy decoding (the arg-max)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = filter_logits(logits / temperature, top_k, top_p)
    probs = logits.float().softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)


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
    """Extend ids ``(B, T)`` by ``max_new_tokens`` sampled tokens; returns ``(B, T + max_new_tokens)``.

    Without the cache (or once the sequence outgrows ``block_size``) the model re-reads the last
    ``block_size`` tokens at every step. ``model_kwargs`` go to every call of the model, e.g.
    ``memory=`` and ``memory_mask=`` for a decoder with cross-attention (whose keys and values the cache
    computes once).
    """
    block = model.config.block_size
    total = idx.size(1) + max_new_tokens
    cache = model.new_cache(idx.size(0), max_len=min(total, block)) if use_cache and idx.size(1) < block else None
    with evaluating(model):
        logits = model(idx[:, -block:], cache=cache, **model_kwargs)[:, -1]
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, nxt], dim=1)
            if i == max_new_tokens - 1:
                break
            if cache is not None and cache.length < cache.max_len:
                logits = model(nxt, cache=cache, **model_kwargs)[:, -1]  # one new position
            else:
                cache = None
                logits = model(idx[:, -block:], **model_kwargs)[:, -1]  # the whole (cropped) context again
    return idx
