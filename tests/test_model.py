import pytest
import torch
from torch.testing import assert_close

from helpers import GPT, Block, Encoder, TransformerConfig, collect_attention, generate, mean_pool
from helpers.attention import padding_mask


def tiny(**kw):
    base = dict(vocab_size=31, block_size=24, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return TransformerConfig(**base)


def test_gpt_shapes_from_ids_and_from_embeddings():
    model = GPT(tiny())
    ids = torch.randint(0, 31, (3, 10))
    assert model(ids).shape == (3, 10, 31)
    embeds = model.wte(ids)
    assert_close(model(embeds), model(ids))  # ids are just a lookup into the embedding table
    headless = GPT(tiny(vocab_size=None, n_out=5))
    assert headless(torch.randn(2, 7, 32)).shape == (2, 7, 5)
    with pytest.raises(ValueError, match="float embeddings"):
        headless(ids)


def test_gpt_is_causal():
    model = GPT(tiny()).eval()
    ids = torch.randint(0, 31, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 31
    assert_close(model(ids)[:, :8], model(changed)[:, :8])  # the past never sees the future
    assert not torch.allclose(model(ids)[:, 8:], model(changed)[:, 8:])


def test_gpt_rejects_too_long_input():
    with pytest.raises(ValueError, match="block_size"):
        GPT(tiny())(torch.zeros(1, 25, dtype=torch.long))


def test_gpt2_style_init():
    model = GPT(tiny(n_layer=8, n_embd=64, vocab_size=500))
    assert abs(model.wte.weight.std().item() - 0.02) < 0.002
    for block in model.blocks:  # the layers that write into the residual stream: 0.02 / sqrt(2 * 8)
        for proj in (block.attn.proj, block.mlp.proj):
            assert abs(proj.weight.std().item() - 0.02 / 4) < 0.001
            assert (proj.bias == 0).all()
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
    assert (model.blocks[0].ln1.weight == 1).all() and (model.blocks[0].ln1.bias == 0).all()
    assert model.head.weight is model.wte.weight  # tied input and output embeddings


def test_every_mlp_has_its_own_activation_module():
    model = GPT(tiny(activation="gelu_tanh"))
    activations = [block.mlp.act for block in model.blocks]
    assert len({id(a) for a in activations}) == len(activations)
    assert all(a.approximate == "tanh" for a in activations)


def test_transformer_config_copies_the_fields_a_topic_config_shares():
    from dataclasses import dataclass

    from helpers.model import transformer_config

    @dataclass
    class TopicConfig:
        n_layer: int = 3
        n_embd: int = 48
        dropout: float = 0.1
        n_classes: int = 7  # not a TransformerConfig field: ignored

    cfg = transformer_config(TopicConfig(), vocab_size=None, n_out=7)
    assert (cfg.n_layer, cfg.n_embd, cfg.dropout, cfg.n_out, cfg.vocab_size) == (3, 48, 0.1, 7, None)
    assert cfg.n_head == TransformerConfig().n_head  # not in the topic config: the default
    with pytest.raises(TypeError, match="no field"):
        transformer_config(TopicConfig(), n_classes=3)


def test_evaluating_restores_the_mode_even_after_an_exception():
    from helpers.model import evaluating

    model = GPT(tiny(dropout=0.5)).train()
    with evaluating(model):
        assert not model.training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError, match="boom"), evaluating(model):
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with evaluating(model):
        pass
    assert not model.training  # a model in eval mode stays in eval mode


def test_kv_cache_matches_full_forward():
    model = GPT(tiny()).eval()
    ids = torch.randint(0, 31, (2, 15))
    full = model(ids)
    cache = model.new_cache(2)
    parts = [model(ids[:, :6], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(6, 15)]
    assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_generate_with_and_without_cache_agree():
    model = GPT(tiny())
    prompt = torch.randint(0, 31, (2, 4))
    greedy = generate(model, prompt, 16, temperature=0)
    assert torch.equal(greedy, generate(model, prompt, 16, temperature=0, use_cache=False))
    sampled = generate(model, prompt, 16, top_k=5, generator=torch.Generator().manual_seed(3))
    again = generate(model, prompt, 16, top_k=5, use_cache=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, again)
    # past the block size the context slides
    assert generate(model, prompt, 40, temperature=0).shape == (2, 44)


def test_encoder_returns_states_and_classifies_from_its_class_token():
    model = Encoder(tiny(n_out=3)).eval()
    ids = torch.randint(0, 31, (1, 10))
    states = model(ids)
    assert states.shape == (1, 11, 32)  # the class token's state first
    base = model.classify(ids)
    assert base.shape == (1, 3)
    assert_close(base, model.head(model.pool(states)))
    assert_close(model.pool(states), states[:, 0])
    for t in range(10):  # changing any one token changes the class output
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 1) % 31
        assert not torch.allclose(model.classify(changed), base)


def test_encoder_pool_and_classify_say_what_is_missing():
    with pytest.raises(ValueError, match="no class token"):
        Encoder(tiny(cls_token=False)).pool(torch.randn(1, 4, 32))
    with pytest.raises(ValueError, match="no output head"):
        Encoder(tiny(n_out=None)).classify(torch.randint(0, 31, (1, 4)))


def test_encoder_padding_invariance():
    model = Encoder(tiny(vocab_size=None, n_out=4)).eval()
    x = torch.randn(1, 6, 32)
    padded = torch.cat([x, torch.randn(1, 4, 32)], dim=1)
    assert_close(model.classify(padded, padding_mask=padding_mask([6], 10)), model.classify(x))


def test_encoder_without_class_token_returns_states():
    model = Encoder(tiny(cls_token=False, norm_first=False, embed_norm=True, type_vocab_size=2)).eval()
    ids = torch.randint(0, 31, (2, 9))
    states = model(ids)
    assert states.shape == (2, 9, 32)
    mask = padding_mask([9, 4], 9)
    pooled = mean_pool(states, mask)
    assert_close(pooled[1], states[1, :4].mean(0))


def test_block_pre_and_post_norm():
    x = torch.randn(2, 5, 32)
    for norm_first in (True, False):
        block = Block(tiny(norm_first=norm_first)).eval()
        y = block(x)
        assert y.shape == x.shape
    # a post-norm block ends with LayerNorm: every position has mean 0, std 1
    assert_close(y.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_collect_attention():
    model = GPT(tiny()).eval()
    ids = torch.randint(0, 31, (2, 7))
    with collect_attention(model) as maps:
        logits = model(ids)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 7, 7)
    assert (maps[0].triu(1) == 0).all()
    assert_close(model(ids), logits)  # the recorded (einsum) path computes the same thing
    assert all(not m.store_weights for m in model.modules() if hasattr(m, "store_weights"))
