import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from helpers.attention import MultiHeadAttention, causal_mask, combine_masks, einsum_attention, padding_mask

SHAPES = [(1, 1, 1, 4), (2, 3, 5, 8), (4, 2, 17, 16), (3, 8, 33, 4)]  # (B, H, T, D)


@pytest.mark.parametrize("B,H,T,D", SHAPES)
@pytest.mark.parametrize("kind", ["none", "causal", "padding", "both"])
def test_einsum_attention_equals_sdpa(B, H, T, D, kind):
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    lengths = torch.randint(1, T + 1, (B,))
    pad = padding_mask(lengths, T) if kind in ("padding", "both") else None
    mask = combine_masks(kind in ("causal", "both"), pad, T, T)
    ours = einsum_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if kind == "both":  # a query before every real key has no key to see: both give NaN there
        ok = ~ref.isnan()
        assert torch.equal(ok, ~ours.isnan())
        ours, ref = ours[ok], ref[ok]
    assert_close(ours, ref)


def test_masks():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    # two cached positions, two new queries: they see everything up to themselves
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    assert torch.equal(padding_mask([2, 3], 4), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool))


def test_weights_are_a_distribution_and_respect_the_mask():
    q = k = v = torch.randn(2, 6, 8)
    _, w = einsum_attention(q, k, v, causal_mask(6), return_weights=True)
    assert_close(w.sum(-1), torch.ones(2, 6))
    assert (w.triu(1) == 0).all()


def _copy_into_torch_mha(ours: MultiHeadAttention, d: int, h: int) -> nn.MultiheadAttention:
    ref = nn.MultiheadAttention(d, h, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ref.eval()


@pytest.mark.parametrize("B,T,d,h", [(1, 1, 8, 1), (2, 7, 16, 4), (3, 20, 48, 6)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("reference_path", [False, True])
def test_multi_head_attention_equals_torch(B, T, d, h, causal, padded, reference_path):
    ours = MultiHeadAttention(d, h).double().eval()
    ours.store_weights = reference_path  # the einsum path and the SDPA path must both agree
    ref = _copy_into_torch_mha(ours, d, h)
    x = torch.randn(B, T, d, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    pad = padding_mask(lengths, T) if padded else None
    ref_mask = ~causal_mask(T) if causal else None  # torch's masks: True = blocked
    expected, _ = ref(x, x, x, attn_mask=ref_mask, key_padding_mask=None if pad is None else ~pad, need_weights=False)
    got = ours(x, causal=causal, padding_mask=pad)
    if causal and padded:
        valid = ~expected.isnan().any(-1)
        assert_close(got[valid], expected[valid])
    else:
        assert_close(got, expected)


def test_head_size_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_padding_never_changes_real_positions():
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 5, 16)
    alone = mha(x)
    padded = torch.cat([x, torch.randn(1, 3, 16)], dim=1)
    together = mha(padded, padding_mask=padding_mask([5], 8))
    assert_close(together[:, :5], alone)
