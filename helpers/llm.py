"""Notebook 09, a modern LLM on a laptop: what only it needs.

* references from the ``transformers`` library on SmolLM2's weights: :func:`hf_llama` (a ``LlamaForCausalLM``
  from a state dict, in a second) and :func:`hf_llama_from_gguf` (transformers' own GGUF loader);
  the same for Gemma 3 270M: :func:`hf_gemma3` and :func:`hf_gemma3_from_gguf`;
* Q4_1 quantization error: :func:`quantize_q4_1` (by hand) and :func:`relative_error`;
* the fine-tuning text: Tiny Shakespeare through Hugging Face ``datasets`` (:func:`text_splits`,
  :func:`tokenize_batch`, :func:`windows_batch`), the loss (:func:`next_token_loss`) and the validation loss in
  nats per character (:func:`nats_per_char`); where the parameters are (:func:`parameters_by_part`).
"""

from __future__ import annotations

import contextlib
import importlib
import re

import torch
import torch.nn.functional as F

from .config import mixed_precision
from .model import evaluating

# --------------------------------------------------------------------------- references from transformers


def _no_init_weights():
    """transformers' switch that skips the random initialisation of a model about to receive weights (its
    place moved between versions); a no-op where it cannot be found."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        with contextlib.suppress(ImportError, AttributeError):
            return importlib.import_module(module).no_init_weights()
    return contextlib.nullcontext()


def hf_llama(state: dict[str, torch.Tensor], hf_config: dict, dtype: torch.dtype = torch.float32):
    """transformers' ``LlamaForCausalLM`` holding ``state`` (Hugging Face names, e.g. from
    :func:`helpers.pretrained.smollm2_weights`), in eval mode: the reference our GPT is checked against."""
    import transformers

    config = transformers.LlamaConfig(**hf_config)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # as from_pretrained(dtype=...) builds it: RoPE's frequencies stay float32
    try:
        with _no_init_weights():
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    missing, unexpected = model.load_state_dict(state, strict=False)  # copied, converted to dtype
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"state dict does not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def hf_llama_from_gguf(dtype: torch.dtype = torch.float32):
    """transformers' own loading of the SmolLM2 GGUF file (``from_pretrained(folder, gguf_file=name)``: it
    dequantizes with the ``gguf`` package and un-permutes q and k itself); 15-20 s on 2 cores."""
    import transformers

    from .gguf import smollm2_path

    path = smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=dtype).eval()


def hf_gemma3(state: dict[str, torch.Tensor], hf_config: dict, dtype: torch.dtype = torch.float32):
    """transformers' ``Gemma3ForCausalLM`` holding ``state`` (Hugging Face names, e.g. from
    :func:`helpers.gemma.gemma3_weights`), in eval mode, with the ``sdpa`` attention: built in a few seconds,
    where transformers' own GGUF loading (:func:`hf_gemma3_from_gguf`) takes about a minute."""
    import transformers

    config = transformers.Gemma3TextConfig(**hf_config)
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with _no_init_weights():
            model = transformers.Gemma3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"state dict does not fit Gemma3ForCausalLM: missing {missing}, unexpected {unexpected}")
    model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def hf_gemma3_from_gguf(dtype: torch.dtype = torch.float32):
    """transformers' own loading of the Gemma 3 270M GGUF file (``from_pretrained(folder, gguf_file=name)``: it
    dequantizes with the ``gguf`` package and subtracts the 1 from the norms itself); about a minute on 2 cores.
    The weights are Google's base ``gemma-3-270m``, under the Gemma terms of use (https://ai.google.dev/gemma/terms)."""
    import transformers

    from .gguf import gemma3_path

    path = gemma3_path()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=dtype).eval()


# --------------------------------------------------------------------------- Q4_1 by hand


def quantize_q4_1(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 as llama.cpp (and the ``gguf`` package) writes it, without packing the bytes: each run of 32 weights
    along a row gets a minimum ``m`` and a step ``d = (max - min) / 15``, and each weight the nearest of the 16
    levels ``m, m + d, ..., max``: the code ``q = round((w - m) / d)`` in 0..15. ``d`` and ``m`` are then stored as
    fp16. Returns ``(q, d, m)``: (n_blocks, 32) uint8, (n_blocks, 1) and (n_blocks, 1) float32 (fp16 values)."""
    blocks = w.float().reshape(-1, 32)
    low, high = blocks.min(dim=1, keepdim=True).values, blocks.max(dim=1, keepdim=True).values
    d = (high - low) / 15
    inverse = torch.where(d > 0, 1 / d, torch.zeros_like(d))  # a constant block: every code 0
    q = ((blocks - low) * inverse + 0.5).floor().clamp(0, 15).to(torch.uint8)
    return q, d.half().float(), low.half().float()


def dequantize_blocks(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, shape) -> torch.Tensor:
    """``w = d * q + m`` for every block, back to ``shape``."""
    return (d * q.float() + m).reshape(shape)


def q4_1_steps(gguf_file, name: str) -> torch.Tensor:
    """The fp16 step ``d`` of every block of a Q4_1 tensor of a GGUF file (bytes 0-1 of each 20), as float32."""
    blocks = torch.frombuffer(bytearray(gguf_file.raw(name)), dtype=torch.uint8).reshape(-1, 20)
    return blocks[:, 0:2].view(torch.float16).float().squeeze(1)


def estimated_q4_1_error(steps: torch.Tensor, weights: torch.Tensor) -> float:
    """The relative error Q4_1 rounding added to a matrix, from its block steps alone (the original weights are
    gone): a weight rounded to the nearest level is off by at most d/2, about uniformly, so by d / sqrt(12) in
    root mean square. Returns RMS(error) / RMS(weights)."""
    return (steps.pow(2).mean() / 12).sqrt().item() / weights.float().pow(2).mean().sqrt().item()


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """The size of the error relative to the size of the weights: ||approx - exact|| / ||exact|| (RMS over RMS)."""
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


# --------------------------------------------------------------------------- fine-tuning text, with datasets


def text_splits(text: str, train_fraction: float = 0.9):
    """nanoGPT's split of a text as a Hugging Face ``DatasetDict``: the first 90% of the characters train, the
    last 10% validate; one row per line. Each row starts with its line's newline (``"\\nAnd so"``), not ends
    with it: then the rows' tokens, joined, are the tokens of the whole text (a line's trailing spaces and its
    newline would otherwise be one token, where the whole text splits them)."""
    from datasets import Dataset, DatasetDict

    split = int(train_fraction * len(text))
    return DatasetDict({name: Dataset.from_dict({"text": [line for line in re.split(r"(?=\n)", part) if line]})
                        for name, part in (("train", text[:split]), ("validation", text[split:]))})


def tokenize_batch(batch: dict, tokenizer) -> dict:
    """For ``Dataset.map(..., batched=True)``: the ids of every line (``tokenizer``: a :class:`ChatTokenizer`)."""
    return {"ids": [e.ids for e in tokenizer.tokenizer.encode_batch(batch["text"], add_special_tokens=False)]}


def windows_batch(batch: dict, block_size: int) -> dict:
    """For ``Dataset.map(..., batched=True)``: the ids of the lines of a batch joined, then cut into windows of
    ``block_size + 1`` (inputs and, one on, targets); the ragged end of each batch is dropped."""
    ids = [i for line in batch["ids"] for i in line]
    n = len(ids) // (block_size + 1)
    return {"input_ids": [ids[k * (block_size + 1) : (k + 1) * (block_size + 1)] for k in range(n)]}


def next_token_loss(model, batch: dict) -> torch.Tensor:
    """``fit``'s loss for a batch of windows ``{"input_ids": (B, T + 1)}``: predict tokens 1..T from 0..T-1."""
    ids = batch["input_ids"]
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())


def nats_per_char(model, text: str, tokenizer, block_size: int, batch_size: int = 8, autocast_dtype="auto",
                  bos_id: int | None = None) -> float:
    """Validation loss of a language model in nats per character of ``text``, whatever its tokenizer (anything
    with ``encode`` and ``decode``): the text's ids cut into consecutive windows of ``block_size`` tokens, every
    token after the first predicted once, the summed loss divided by the number of characters predicted.
    ``bos_id`` (Gemma, trained with ``<bos>`` opening every sequence): each window's input opens with it, so that
    every token of the windows is predicted, the first one of each from ``<bos>`` alone; ``tokenizer.encode``
    must not add it itself. ``autocast_dtype``: as :func:`helpers.evaluate`'s (``"auto"``: the hardware's mixed
    precision, float32 on a CPU)."""
    ids = torch.tensor(tokenizer.encode(text))
    if bos_id is None:
        n = (len(ids) - 1) // block_size
        if n == 0:
            raise ValueError(f"{len(ids)} tokens do not fill one window of {block_size} + 1")
        x, y = ids[: n * block_size].view(n, block_size), ids[1 : n * block_size + 1].view(n, block_size)
    else:
        n = len(ids) // block_size
        if n == 0:
            raise ValueError(f"{len(ids)} tokens do not fill one window of {block_size}")
        y = ids[: n * block_size].view(n, block_size)  # (n, T): the targets, every token of the windows
        x = torch.cat([torch.full((n, 1), bos_id), y[:, :-1]], dim=1)  # (n, T): <bos>, then the targets but one
    device = next(model.parameters()).device
    total = 0.0
    with evaluating(model), mixed_precision(device, autocast_dtype):
        for i in range(0, n, batch_size):
            logits = model(x[i : i + batch_size].to(device))
            total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + batch_size].flatten().to(device),
                                     reduction="sum").item()
    return total / len(tokenizer.decode(y.flatten().tolist()))


def parameters_by_part(model) -> dict[str, int]:
    """Where a GPT's parameters are: ``{"embedding": ..., "blocks": ..., "final norm": ..., "output head": ...}``
    (the output head counts 0 when it is the embedding matrix, tied). Gemma 3 270M: 168M of its 268M in the
    embedding, 262,144 tokens x 640."""
    embedding = {id(p) for m in (model.wte, model.wpe) if m is not None for p in m.parameters()}
    head = [p for p in model.head.parameters() if id(p) not in embedding]
    return {"embedding": sum(p.numel() for m in (model.wte, model.wpe) if m is not None for p in m.parameters()),
            "blocks": sum(p.numel() for p in model.blocks.parameters()),
            "final norm": sum(p.numel() for p in model.ln_f.parameters()),
            "output head": sum(p.numel() for p in head)}
