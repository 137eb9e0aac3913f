"""The modern options of the shared model (RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases): our GPT
is a Llama, checked piece by piece and whole against Hugging Face's LlamaForCausalLM on a tiny random config."""

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from helpers import GPT, TransformerConfig, generate
from helpers.attention import MultiHeadAttention, apply_rope, padding_mask, rope_angles
from helpers.model import MLP, Block
from helpers.pretrained import llama_config, llama_from_state_dict

transformers = pytest.importorskip("transformers")
from transformers.models.llama import modeling_llama  # noqa: E402


def tiny_llama(**kw):
    config = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
                  tie_word_embeddings=True)
    config.update(kw)
    torch.manual_seed(0)
    hf = transformers.LlamaConfig(**config, attn_implementation="eager")
    reference = transformers.LlamaForCausalLM(hf).eval()
    with torch.no_grad():  # random norms, so that a missing or misplaced norm weight shows
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return hf, reference


@pytest.mark.parametrize("tied", [True, False])
def test_our_gpt_is_a_llama(tied):
    hf, reference = tiny_llama(tie_word_embeddings=tied)
    ours = llama_from_state_dict(reference.state_dict(), hf.to_dict())
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        expected = reference(ids).logits
    assert_close(ours(ids), expected, atol=1e-5, rtol=1e-5)
    assert (ours.head.weight is ours.wte.weight) == tied
    # the same greedy continuation, with our key-value cache
    prompt = ids[:1, :7]
    with torch.no_grad():
        theirs = reference.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 20, temperature=0), theirs)


def test_the_config_switches_on_the_four_pieces_and_no_biases():
    hf, _ = tiny_llama()
    cfg = llama_config(hf.to_dict())
    assert (cfg.norm, cfg.positions, cfg.mlp, cfg.n_kv_head, cfg.bias) == ("rmsnorm", "rope", "swiglu", 2, False)
    model = GPT(cfg)
    assert model.wpe is None and not any(n.endswith(".bias") for n, _ in model.named_parameters())
    assert all(isinstance(m, torch.nn.RMSNorm) for m in (model.blocks[0].ln1, model.blocks[0].ln2, model.ln_f))


def test_rope_angles_equal_transformers_rotary_embedding():
    hf, _ = tiny_llama()
    rotary = modeling_llama.LlamaRotaryEmbedding(config=hf)
    x = torch.randn(1, 30, 48)
    cos, sin = rotary(x, torch.arange(30)[None])
    ours_cos, ours_sin = rope_angles(8, 30, theta=500.0)
    assert_close(ours_cos, cos[0], rtol=0, atol=0)
    assert_close(ours_sin, sin[0], rtol=0, atol=0)
    q, k = torch.randn(2, 6, 30, 8), torch.randn(2, 2, 30, 8)
    expected_q, expected_k = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    assert_close(apply_rope(q, ours_cos, ours_sin), expected_q, rtol=0, atol=0)
    assert_close(apply_rope(k, ours_cos, ours_sin), expected_k, rtol=0, atol=0)


def test_rope_makes_the_score_depend_only_on_the_distance():
    cos, sin = rope_angles(16, 64)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def score(m, n):  # query at position m, key at position n
        return (apply_rope(q, cos[m].double(), sin[m].double()) @ apply_rope(k, cos[n].double(), sin[n].double())).item()

    for distance in (0, 3, 17):  # equal up to the float32 rounding of the angles
        scores = [score(n + distance, n) for n in (0, 5, 30)]
        assert scores == pytest.approx([scores[0]] * 3, rel=1e-6)
    assert score(10, 0) != pytest.approx(score(11, 0), abs=1e-6)  # the distance does change it
    assert apply_rope(q, cos[7].double(), sin[7].double()).norm() == pytest.approx(q.norm().item())  # a rotation


def test_swiglu_mlp_equals_transformers_llama_mlp():
    hf, _ = tiny_llama()
    reference = modeling_llama.LlamaMLP(hf).eval()
    ours = MLP(TransformerConfig(n_embd=48, d_ff=80, mlp="swiglu", bias=False))
    with torch.no_grad():
        ours.fc.weight.copy_(torch.cat([reference.gate_proj.weight, reference.up_proj.weight]))
        ours.proj.weight.copy_(reference.down_proj.weight)
    x = torch.randn(2, 5, 48)
    assert_close(ours(x), reference(x))


def test_decoder_layer_equals_transformers_llama_decoder_layer():
    hf, reference_model = tiny_llama()
    layer = reference_model.model.layers[1]
    cfg = llama_config(hf.to_dict())
    ours = Block(cfg, layer=1).eval()
    prefix = "model.layers.1."
    sd = reference_model.state_dict()
    with torch.no_grad():
        ours.attn.qkv.weight.copy_(torch.cat([sd[prefix + f"self_attn.{n}_proj.weight"] for n in "qkv"]))
        ours.attn.proj.weight.copy_(sd[prefix + "self_attn.o_proj.weight"])
        ours.mlp.fc.weight.copy_(torch.cat([sd[prefix + "mlp.gate_proj.weight"], sd[prefix + "mlp.up_proj.weight"]]))
        ours.mlp.proj.weight.copy_(sd[prefix + "mlp.down_proj.weight"])
        ours.ln1.weight.copy_(sd[prefix + "input_layernorm.weight"])
        ours.ln2.weight.copy_(sd[prefix + "post_attention_layernorm.weight"])
    x = torch.randn(2, 11, 48)
    cos, sin = modeling_llama.LlamaRotaryEmbedding(config=hf)(x, torch.arange(11)[None])
    causal = torch.full((11, 11), float("-inf")).triu(1)[None, None]  # eager attention's additive mask
    with torch.no_grad():
        expected = layer(x, attention_mask=causal, position_embeddings=(cos, sin))
    expected = expected[0] if isinstance(expected, tuple) else expected
    assert_close(ours(x, causal=True, rope=(cos[0], sin[0])), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reference_path", [False, True])
@pytest.mark.parametrize("causal,padded", [(False, False), (True, False), (False, True)])
def test_grouped_query_attention_equals_repeated_kv_heads(reference_path, causal, padded):
    gqa = MultiHeadAttention(48, 6, bias=False, n_kv_head=2).double().eval()
    gqa.store_weights = reference_path
    x = torch.randn(2, 9, 48, dtype=torch.float64)
    pad = padding_mask([9, 5], 9) if padded else None
    q, k, v = gqa.qkv(x).split([48, 16, 16], dim=-1)
    q = q.view(2, 9, 6, 8).transpose(1, 2)
    k, v = (t.view(2, 9, 2, 8).transpose(1, 2).repeat_interleave(3, dim=1) for t in (k, v))  # heads 0-2 share kv 0
    mask = None if pad is None else pad[:, None, None, :]
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    expected = gqa.proj(expected.transpose(1, 2).reshape(2, 9, 48))
    assert_close(gqa(x, causal=causal, padding_mask=pad), expected)


def test_grouped_query_attention_shrinks_the_cache():
    cfg = dict(vocab_size=50, block_size=32, n_layer=2, n_head=6, n_embd=48, positions="rope", norm="rmsnorm",
               mlp="swiglu", bias=False)
    full, grouped = GPT(TransformerConfig(**cfg)), GPT(TransformerConfig(**cfg, n_kv_head=2))
    assert grouped.new_cache(1).numel() * 3 == full.new_cache(1).numel()
    assert grouped.new_cache(1).k[0].shape == (1, 2, 32, 8)
    ids = torch.randint(0, 50, (2, 12))
    cache = grouped.new_cache(2)
    steps = [grouped(ids[:, :5], cache=cache)] + [grouped(ids[:, t : t + 1], cache=cache) for t in range(5, 12)]
    assert_close(torch.cat(steps, dim=1), grouped(ids), atol=1e-5, rtol=1e-5)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="norm='batchnorm'; use one of layernorm, rmsnorm"):
        TransformerConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="positions="):
        TransformerConfig(positions="sinusoidal")
    with pytest.raises(ValueError, match="not a multiple of n_kv_head"):
        MultiHeadAttention(48, 6, n_kv_head=4)


def test_bfloat16_gives_transformers_logits_and_tokens():
    """In bfloat16 rounding order matters: our RMSNorm normalises in float32 and rounds before the gain, and
    RoPE's angles are float32, as Meta's and Hugging Face's Llama do."""
    from helpers.llm import hf_llama

    hf, reference = tiny_llama()
    ours = llama_from_state_dict(reference.state_dict(), hf.to_dict()).to(torch.bfloat16)  # angles: float32, rounded
    theirs = hf_llama({k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}, hf.to_dict(),
                      dtype=torch.bfloat16)
    assert theirs.model.rotary_emb.inv_freq.dtype == torch.float32
    ids = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        assert torch.equal(ours(ids), theirs(ids).logits)
        expected = theirs.generate(ids[:1, :7], max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, ids[:1, :7], 12, temperature=0), expected)


def test_last_only_and_the_one_query_path_change_nothing():
    hf, reference = tiny_llama()
    ours = llama_from_state_dict(reference.state_dict(), hf.to_dict())
    ids = torch.randint(0, 97, (2, 15))
    with torch.no_grad():
        full = ours(ids)
        assert_close(ours(ids, last_only=True), full[:, -1:], atol=1e-6, rtol=1e-6)
        cache = ours.new_cache(2)
        ours(ids[:, :14], cache=cache)
        step = ours(ids[:, 14:], cache=cache, last_only=True)  # one query per head: the grouped fast path
        attention = ours.blocks[0].attn
        attention.store_weights = True  # the einsum reference, kv heads repeated
        cache = ours.new_cache(2)
        ours(ids[:, :14], cache=cache)
        reference_step = ours(ids[:, 14:], cache=cache, last_only=True)
        attention.store_weights = False
    assert_close(step, full[:, -1:], atol=1e-5, rtol=1e-5)
    assert_close(step, reference_step, atol=1e-5, rtol=1e-5)
