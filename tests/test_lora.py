"""LoRA by hand (helpers.lora): starts equal to the base model, equals the peft library's LoRA on the same layer
with the same A and B, merges into the weights without changing the logits, trains only A and B, and
round-trips as a checkpoint of the adapters alone."""

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import GPT, TransformerConfig, fit, load_checkpoint, save_checkpoint
from helpers.lora import LoRA, LoRAAdapters, LoRALinear


def tiny_llama():
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, block_size=16, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, d_ff=48,
                            norm="rmsnorm", positions="rope", mlp="swiglu", bias=False)
    return GPT(cfg).eval()


def randomise_b(adapters):
    with torch.no_grad():
        for _, lora in adapters.named_updates():
            lora.B.normal_(0, 0.1)


def test_the_adapted_model_starts_equal_to_the_base_model():
    model = tiny_llama()
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        before = model(ids)
    adapters = LoRAAdapters.for_model(model, layers=[1, 2], r=4, alpha=8)
    adapters.attach(model)
    assert isinstance(model.blocks[2].mlp.fc, LoRALinear) and not isinstance(model.blocks[0].mlp.fc, LoRALinear)
    assert all((lora.B == 0).all() and (lora.A != 0).any() for _, lora in adapters.named_updates())
    with torch.no_grad():
        assert torch.equal(model(ids), before)  # B = 0: exactly the base model


def test_only_a_and_b_train_and_the_loss_falls():
    model = tiny_llama()
    adapters = LoRAAdapters.for_model(model, layers=[2], r=4, alpha=8)
    adapters.attach(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.2.{k}.lora.{m}" for k in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
                         for m in "AB"}
    # r * (in + out) per layer: qkv 32 -> 64 (4 query heads, 2 kv heads of 8), proj 32 -> 32, fc 32 -> 96, proj 48 -> 32
    assert model.num_parameters() == adapters.num_parameters() == 4 * (96 + 64 + 128 + 80)
    frozen = copy.deepcopy({n: p for n, p in model.state_dict().items() if ".lora." not in n})
    ids = torch.randint(0, 50, (8, 17))
    history = fit(model, lambda step: (ids[:, :-1], ids[:, 1:]), steps=30, lr=1e-2, progress=False, device="cpu")
    assert history.train_loss[-1] < history.train_loss[0] - 0.1
    assert all(torch.equal(p, frozen[n]) for n, p in model.state_dict().items() if ".lora." not in n)
    assert all((lora.B != 0).any() for _, lora in adapters.named_updates())


def test_lora_equals_peft_on_the_same_layer_with_the_same_a_and_b():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = nn.Linear(32, 24, bias=False)
    theirs = peft.get_peft_model(nn.Sequential(copy.deepcopy(base)),
                                 peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_dropout=0.0))
    layer = theirs.base_model.model[0]
    lora = LoRA(32, 24, r=4, alpha=8)
    with torch.no_grad():
        lora.B.normal_()
        layer.lora_A["default"].weight.copy_(lora.A)
        layer.lora_B["default"].weight.copy_(lora.B)
    ours = LoRALinear(base, lora)
    x = torch.randn(3, 5, 32)
    assert layer.scaling["default"] == lora.scale == 2.0
    assert_close(ours(x), theirs(x))
    merged = theirs.merge_and_unload()[0]
    assert_close(ours.merged().weight, merged.weight)


def test_merging_gives_the_same_logits():
    model = tiny_llama()
    adapters = LoRAAdapters.for_model(model, layers=range(3), r=4, alpha=8)
    adapters.attach(model)
    randomise_b(adapters)
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        adapted = model(ids)
        adapters.merge(model)
        merged = model(ids)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.blocks[0].attn.proj).__name__ == "ResidualProjection"  # the layer's own class is kept
    assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged, tiny_llama()(ids))  # and the update did change the model


def test_detach_gives_the_base_model_back():
    model = tiny_llama()
    ids = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        before = model(ids)
    adapters = LoRAAdapters.for_model(model, layers=[0], r=2)
    adapters.attach(model)
    randomise_b(adapters)
    adapters.detach(model)
    with torch.no_grad():
        assert torch.equal(model(ids), before)


def test_the_checkpoint_holds_only_the_adapters(tmp_path):
    model = tiny_llama()
    adapters = LoRAAdapters.for_model(model, layers=[1, 2], r=4, alpha=8)
    adapters.attach(model)
    randomise_b(adapters)
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        expected = model(ids)
    path = save_checkpoint(adapters, tmp_path / "adapters.pt", note="tiny")
    loaded = load_checkpoint(path)
    assert set(loaded.state_dict()) == {f"updates.blocks__{i}__{k.replace('.', '__')}.{m}" for i in (1, 2)
                                        for k in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj") for m in "AB"}
    assert loaded.checkpoint_extra == {"note": "tiny"} and loaded.num_parameters() == adapters.num_parameters()
    fresh = loaded.attach(tiny_llama())
    with torch.no_grad():
        assert torch.equal(fresh(ids), expected)


def test_bad_targets_are_clear_errors():
    model = tiny_llama()
    with pytest.raises(TypeError, match="not an nn.Linear"):
        LoRAAdapters.for_model(model, layers=[0], kinds=["ln1"])
    adapters = LoRAAdapters.for_model(model, layers=[0])
    adapters.attach(model)
    with pytest.raises(ValueError, match="already has a LoRA update"):
        adapters.attach(model)
    wide = GPT(TransformerConfig(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_embd=64))
    with pytest.raises(ValueError, match="64 -> 192"):
        LoRAAdapters.for_model(tiny_llama(), layers=[0], kinds=["attn.qkv"]).attach(wide)
