"""Cross-attention, the decoder block with cross-attention and the encoder-decoder, against PyTorch's own."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import TransformerConfig, fit
from helpers.attention import CrossAttention, causal_mask, padding_mask
from helpers.model import Block
from helpers.seq2seq import EncoderDecoder, EncoderDecoderConfig


def _copy_into_torch_mha(ours: CrossAttention, d: int, h: int) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(d, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.kv.weight]))  # [W_q; W_k; W_v]
        ref.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.kv.bias]))
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ref.eval()


@pytest.mark.parametrize("B,T,S,d,h", [(1, 1, 1, 8, 1), (2, 7, 3, 16, 4), (3, 5, 19, 48, 6)])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("reference_path", [False, True])
def test_cross_attention_equals_torch(B, T, S, d, h, padded, reference_path):
    ours = CrossAttention(d, h).double().eval()
    with torch.no_grad():  # random biases, so that a bias in the wrong place shows
        for p in ours.parameters():
            if p.dim() == 1:
                p.normal_()
    ours.store_weights = reference_path
    ref = _copy_into_torch_mha(ours, d, h)
    x, memory = torch.randn(B, T, d, dtype=torch.float64), torch.randn(B, S, d, dtype=torch.float64)
    lengths = torch.randint(1, S + 1, (B,))
    mask = padding_mask(lengths, S) if padded else None
    expected, weights = ref(x, memory, memory, key_padding_mask=None if mask is None else ~mask,
                            average_attn_weights=False)
    assert_close(ours(x, memory, memory_mask=mask), expected)
    if reference_path:
        assert_close(ours.weights, weights)
        if padded:  # no query looks at padding
            assert (ours.weights.masked_select(~mask[:, None, None, :].expand_as(ours.weights)) == 0).all()


def _copy_into_torch_decoder_layer(ours: Block, d: int, h: int, ff: int) -> nn.TransformerDecoderLayer:
    ref = nn.TransformerDecoderLayer(d, h, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
                                     dtype=torch.float64)
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.attn.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.attn.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(ours.attn.proj.weight)
        ref.self_attn.out_proj.bias.copy_(ours.attn.proj.bias)
        ref.multihead_attn.in_proj_weight.copy_(torch.cat([ours.cross.q.weight, ours.cross.kv.weight]))
        ref.multihead_attn.in_proj_bias.copy_(torch.cat([ours.cross.q.bias, ours.cross.kv.bias]))
        ref.multihead_attn.out_proj.weight.copy_(ours.cross.proj.weight)
        ref.multihead_attn.out_proj.bias.copy_(ours.cross.proj.bias)
        for theirs, mine in ((ref.linear1, ours.mlp.fc), (ref.linear2, ours.mlp.proj), (ref.norm1, ours.ln1),
                             (ref.norm2, ours.ln_cross), (ref.norm3, ours.ln2)):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    return ref.eval()


@pytest.mark.parametrize("padded", [False, True])
def test_decoder_block_equals_torch_transformer_decoder_layer(padded):
    cfg = TransformerConfig(n_embd=32, n_head=4, d_ff=48)
    ours = Block(cfg, cross_attention=True).double().eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    ref = _copy_into_torch_decoder_layer(ours, 32, 4, 48)
    x, memory = torch.randn(2, 9, 32, dtype=torch.float64), torch.randn(2, 6, 32, dtype=torch.float64)
    mask = padding_mask([6, 2], 6) if padded else None
    expected = ref(x, memory, tgt_mask=~causal_mask(9), memory_key_padding_mask=None if mask is None else ~mask)
    assert_close(ours(x, causal=True, memory=memory, memory_mask=mask), expected)


def test_a_block_with_cross_attention_needs_its_memory():
    block = Block(TransformerConfig(n_embd=16, n_head=2), cross_attention=True)
    with pytest.raises(ValueError, match="pass memory"):
        block(torch.randn(1, 3, 16))


def tiny(**kw):
    base = dict(src_vocab_size=13, tgt_vocab_size=11, src_block_size=12, tgt_block_size=10, n_layer=2, n_head=2,
                n_embd=16)
    return EncoderDecoderConfig(**{**base, **kw})


def test_memory_keys_and_values_are_computed_once_and_give_the_same_tokens():
    model = EncoderDecoder(tiny()).eval()
    src = torch.randint(0, 13, (3, 12))
    src_mask = padding_mask([12, 7, 3], 12)
    start = torch.zeros(3, 1, dtype=torch.long)
    cached = model.generate(src, start, 9, src_mask=src_mask, temperature=0)
    uncached = model.generate(src, start, 9, src_mask=src_mask, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    calls = []
    handle = model.decoder.blocks[0].cross.kv.register_forward_hook(lambda *_: calls.append(1))
    model.generate(src, start, 9, src_mask=src_mask, temperature=0)
    handle.remove()
    assert len(calls) == 1  # the memory's keys and values, once for the whole generation
    # with sampling too (the same generator draws the same tokens)
    a = model.generate(src, start, 9, src_mask=src_mask, generator=torch.Generator().manual_seed(1))
    b = model.generate(src, start, 9, src_mask=src_mask, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_padding_in_the_source_never_changes_the_output():
    model = EncoderDecoder(tiny()).eval()
    src, tgt = torch.randint(0, 13, (1, 5)), torch.randint(0, 11, (1, 6))
    padded = torch.cat([src, torch.randint(0, 13, (1, 7))], dim=1)
    assert_close(model(padded, tgt, src_mask=padding_mask([5], 12)), model(src, tgt))


def test_encoder_decoder_learns_to_reverse():
    torch.manual_seed(0)
    model = EncoderDecoder(tiny(src_vocab_size=10, tgt_vocab_size=11, src_block_size=6, tgt_block_size=7, n_embd=32))

    def batch(step):  # target = the source reversed, after a start token (10)
        g = torch.Generator().manual_seed(step)
        src = torch.randint(0, 10, (32, 6), generator=g)
        tgt = torch.cat([torch.full((32, 1), 10), src.flip(1)], dim=1)
        return src, tgt[:, :-1], tgt[:, 1:]

    def loss_fn(m, b):
        src, tgt_in, tgt_out = b
        return nn.functional.cross_entropy(m(src, tgt_in).flatten(0, 1), tgt_out.flatten())

    history = fit(model, batch, steps=300, lr=3e-3, loss_fn=loss_fn, progress=False, device="cpu")
    assert history.train_loss[-1] < 0.1 * history.train_loss[0]
    src, _, want = batch(10_000)
    got = model.generate(src, torch.full((32, 1), 10), 6, temperature=0)[:, 1:]
    assert (got == want).float().mean() > 0.9  # most reversed digits right on unseen sources
