"""Autoregressive generation with a key-value cache, and the sampling strategies.

With the cache each new token runs the model on one position and attends to the stored keys and
values of the prefix, instead of re-running the whole prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

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

    def next_logits(x):  # eval mode and no gradients for this call only: a generator must not leave them
        with evaluating(model):  # switched while it waits between tokens (the caller's code runs then)
            return _last_logits(model, x, cache=cache)

    logits = next_logits(prompt)  # the whole prompt in one pass ("prefill")
    for i in range(n_new):
        nxt = sample_next(logits, **sampling)  # (1, 1)
        if int(nxt) in stop:
            return
        yield int(nxt)
        if i < n_new - 1:
            logits = next_logits(nxt)  # one new position


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
