import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from helpers import load_checkpoint, save_checkpoint
from helpers import vision as V
from helpers.data import OfflineError

# --------------------------------------------------------------------------- patches and quantization


@pytest.mark.parametrize("shape,p", [((2, 1, 28, 28), 4), ((2, 1, 28, 28), 7), ((3, 3, 32, 32), 4),
                                     ((3, 3, 32, 32), 8), ((1, 2, 12, 8), 2), ((2, 28, 28), 14)])
def test_patchify_round_trip(shape, p):
    images = torch.randn(shape)
    patches = V.patchify(images, p)
    C = shape[1] if len(shape) == 4 else 1
    H, W = shape[-2:]
    assert patches.shape == (shape[0], (H // p) * (W // p), C * p * p)
    back = V.unpatchify(patches, p, (H, W), channels=C)
    assert torch.equal(back, images if len(shape) == 4 else images.unsqueeze(1))


def test_patches_are_raster_order_and_match_a_strided_convolution():
    images = torch.arange(2 * 16.0).reshape(2, 1, 4, 4)
    patches = V.patchify(images, 2)
    assert patches[0, 0].tolist() == [0, 1, 4, 5]  # top-left patch
    assert patches[0, 1].tolist() == [2, 3, 6, 7]  # then the one to its right
    conv = torch.nn.Conv2d(3, 8, 4, stride=4)
    x = torch.randn(2, 3, 16, 16)
    linear = V.patchify(x, 4) @ conv.weight.reshape(8, -1).T + conv.bias  # (B, N, 8)
    assert_close(linear, conv(x).flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_patchify_rejects_bad_sizes():
    with pytest.raises(ValueError, match="patch size dividing"):
        V.patchify(torch.zeros(1, 1, 28, 28), 5)
    with pytest.raises(ValueError, match="do not make"):
        V.unpatchify(torch.zeros(1, 10, 16), 4, 28)


@pytest.mark.parametrize("levels", [2, 4, 8, 256])
def test_quantize_round_trip(levels):
    q = torch.randint(0, levels, (5, 100))
    assert torch.equal(V.quantize(V.dequantize(q, levels), levels), q)
    x = torch.rand(1000)
    err = (V.dequantize(V.quantize(x, levels), levels) - x).abs().max()
    assert err <= 0.5 / (levels - 1) + 1e-6
    assert V.dequantize(torch.tensor([0, levels - 1]), levels).tolist() == [0.0, 1.0]  # black and white kept


def test_patch_codes_round_trip():
    q = torch.randint(0, 4, (3, 196, 4))
    codes = V.patch_codes(q, 4)
    assert codes.shape == (3, 196) and codes.min() >= 0 and codes.max() < 4**4
    assert torch.equal(V.codes_to_patches(codes, 4, 4), q)
    assert len(set(V.patch_codes(torch.cartesian_prod(*[torch.arange(3)] * 4), 3).tolist())) == 3**4  # one code each


def test_quantize_rejects_one_level():
    with pytest.raises(ValueError, match="at least 2"):
        V.quantize(torch.rand(3), 1)


# --------------------------------------------------------------------------- generation


def tiny_patch_gpt(**kw):
    base = dict(image_size=8, patch_size=2, n_classes=3, n_layer=2, n_head=2, n_embd=16)
    base.update(kw)
    return V.PatchGPT(V.PatchGPTConfig(**base))


@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_patch_gpt_is_causal_and_conditional(conditioning):
    model = tiny_patch_gpt(conditioning=conditioning).eval()
    patches = torch.rand(2, 16, 4)
    labels = torch.tensor([0, 1])
    out = model(patches, labels)
    assert out.shape == (2, 16, 4)
    changed = patches.clone()
    changed[:, 9:] = torch.rand(2, 7, 4)
    assert_close(model(changed, labels)[:, :10], out[:, :10])  # prediction t sees patches < t only
    assert not torch.allclose(model(changed, labels)[:, 10:], out[:, 10:])
    assert not torch.allclose(model(patches, torch.tensor([2, 2]))[:, 0], out[:, 0])  # the label matters


@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_patch_gpt_sampling_with_cache_matches_forward(conditioning):
    model = tiny_patch_gpt(conditioning=conditioning).eval()
    labels = torch.tensor([0, 2])
    images = model.sample(labels)  # noise 0: each patch is the model's prediction (clamped to [0, 1])
    assert images.shape == (2, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    patches = V.patchify(images, 2)
    assert_close(model(patches, labels).clamp(0, 1), patches, atol=1e-5, rtol=1e-5)
    given = torch.rand(2, 5, 4)
    completed = model.sample(labels, prefix=given)
    assert_close(V.patchify(completed, 2)[:, :5], given)
    assert model.sample(n=3).shape == (3, 1, 8, 8)


def test_patch_gpt_loss_falls():
    torch.manual_seed(0)
    model = tiny_patch_gpt()
    images = (torch.rand(1, 1, 8, 8) > 0.5).float().expand(8, 1, 8, 8)  # one image to memorise
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model.loss(images).item()
    for _ in range(30):
        loss = model.loss(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_discrete_patch_gpt_is_a_likelihood_over_grey_levels():
    model = tiny_patch_gpt(levels=4).eval()
    images = torch.rand(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 2])
    logits = model(model._prepare(images), labels)
    assert logits.shape == (3, 16, 4, 4)  # (B, patches, pixels per patch, levels)
    targets = V.quantize(V.patchify(images, 2), 4)
    nll = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).mean()
    assert_close(model.loss(images, labels), nll)  # the loss is the negative log-likelihood per pixel
    assert model.loss(images, labels).item() == pytest.approx(math.log(4), abs=0.05)  # untrained: uniform


def test_discrete_pixels_see_only_earlier_pixels_of_their_patch():
    model = tiny_patch_gpt(levels=4).eval()
    torch.nn.init.normal_(model.within.weight)  # as if trained: the within-patch map is not zero
    q = torch.randint(0, 4, (1, 16, 4))
    changed = q.clone()
    changed[0, 5, 1] = (q[0, 5, 1] + 1) % 4  # one pixel of patch 5
    out, out2 = model(V.dequantize(q, 4)), model(V.dequantize(changed, 4))
    assert_close(out[0, :5], out2[0, :5])  # earlier patches do not see it
    assert_close(out[0, 5, :2], out2[0, 5, :2])  # nor do pixels 0 and 1 of its own patch
    assert not torch.allclose(out[0, 5, 2:], out2[0, 5, 2:])  # later pixels of the patch do
    assert not torch.allclose(out[0, 6:], out2[0, 6:])  # and so do later patches


@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_discrete_patch_gpt_samples_on_the_grid(conditioning):
    model = tiny_patch_gpt(levels=4, conditioning=conditioning).eval()
    labels = torch.tensor([0, 2])
    g = torch.Generator().manual_seed(0)
    images = model.sample(labels, generator=g)
    assert images.shape == (2, 1, 8, 8)
    assert torch.equal(V.dequantize(V.quantize(images, 4), 4), images)  # only the 4 grey levels
    again = model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(images, again)  # the generator makes sampling reproducible
    greedy = model.sample(labels, temperature=0)  # the most likely level of every pixel
    patches = V.patchify(greedy, 2)
    assert torch.equal(V.dequantize(model(patches, labels).argmax(-1), 4), patches)


def test_cross_conditioning_reads_the_label_from_a_memory_computed_once():
    model = tiny_patch_gpt(levels=4, conditioning="cross").eval()
    assert model.start.num_embeddings == 1 and model.condition.num_embeddings == 4  # 3 classes and "any"
    assert all(hasattr(block, "cross") for block in model.gpt.blocks)
    labels = torch.tensor([0, 2])
    calls = []
    hooks = [block.cross.kv.register_forward_hook(lambda *_: calls.append(1)) for block in model.gpt.blocks]
    model.sample(labels, generator=torch.Generator().manual_seed(0))
    assert len(calls) == len(model.gpt.blocks)  # one computation of the memory's keys and values per block
    calls.clear()
    model.sample(labels, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert len(calls) == len(model.gpt.blocks)  # with guidance too (both halves of the batch at once)
    for hook in hooks:
        hook.remove()
    # the unconditional memory is the "any class" vector: the same as asking for class 3
    patches = torch.rand(2, 16, 4)
    assert_close(model(patches), model(patches, torch.tensor([3, 3])))


def test_cross_attention_to_one_vector_ignores_its_queries_and_keys():
    """A memory of one vector gets attention weight 1 from every query, so the queries and keys of the
    cross-attention get no gradient: the layer adds a projection of the condition to every position."""
    model = tiny_patch_gpt(conditioning="cross")
    model.loss(torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])).backward()
    C = model.config.n_embd
    for block in model.gpt.blocks:
        values = block.cross.kv.weight.grad[C:].abs().max()  # the values' half of [W_k; W_v] learns
        assert values > 0
        assert block.cross.q.weight.grad.abs().max() < 1e-6 * values  # zero, up to rounding
        assert block.cross.kv.weight.grad[:C].abs().max() < 1e-6 * values  # the keys' half


def test_patch_gpt_rejects_an_unknown_conditioning():
    with pytest.raises(ValueError, match="conditioning"):
        V.PatchGPTConfig(conditioning="film")


def test_checkpoints_without_a_conditioning_field_load_as_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    model = tiny_patch_gpt(levels=4).eval()
    path = save_checkpoint(model, "00_patch_gpt")
    payload = torch.load(path, weights_only=True)
    del payload["config"]["conditioning"]  # as written before the option existed
    torch.save(payload, path)
    again = load_checkpoint("00_patch_gpt")
    assert again.config.conditioning == "prefix"
    patches = torch.rand(2, 16, 4)
    assert torch.equal(again(patches, torch.tensor([0, 1])), model(patches, torch.tensor([0, 1])))


@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_nll_bits_is_the_loss_summed_over_each_image(conditioning):
    model = tiny_patch_gpt(levels=4, conditioning=conditioning).eval()
    images, labels = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    bits = model.nll_bits(images, labels)
    assert bits.shape == (3,)
    assert_close(bits.mean() / 64, model.loss(images, labels).detach() / math.log(2))  # 64 pixels per image
    assert_close(model.nll_bits(images[1:2], labels[1:2]), bits[1:2])  # one image's figure is its own
    # mixing the classes never costs more than log2(classes) bits over the best class (p(y) uniform)
    per_class = torch.stack([model.nll_bits(images, torch.full((3,), y)) for y in range(3)], 1)  # (3, 3)
    mixture = -torch.logsumexp(-per_class * math.log(2) - math.log(3), 1) / math.log(2)
    assert (mixture <= per_class.min(1).values + math.log2(3) + 1e-4).all()
    with pytest.raises(ValueError, match="discrete"):
        tiny_patch_gpt().nll_bits(images)


def test_digit_classifier_shapes():
    model = V.DigitClassifier(V.DigitClassifierConfig())
    assert model(torch.rand(5, 28, 28)).shape == (5, 10)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


# --------------------------------------------------------------------------- classification models


def tiny_vit(**kw):
    base = dict(image_size=16, patch_size=4, conv_layers=2, conv_width=8, n_layer=2, n_head=2, n_embd=16)
    base.update(kw)
    return V.VisionTransformer(V.ViTConfig(**base))


@pytest.mark.parametrize("tokenizer", ["patch", "conv"])
@pytest.mark.parametrize("pool", ["cls", "seq"])
def test_vit_output_shape_and_every_patch_is_seen(tokenizer, pool):
    model = tiny_vit(tokenizer=tokenizer, pool=pool).eval()
    images = torch.randn(3, 3, 16, 16, requires_grad=True)
    logits = model(images)
    assert logits.shape == (3, 10)
    assert model.tokens(images).shape == (3, 16, 16)  # 4x4 tokens either way
    # The class token (or the pooled state) depends on every patch of the image.
    logits[0, 0].backward()
    per_patch = V.patchify(images.grad[:1].abs(), 4).sum(-1)  # (1, 16)
    assert (per_patch > 0).all()
    assert images.grad[1:].abs().sum() == 0  # and on no other image of the batch


def test_vit_patch_embedding_is_patchify_then_linear():
    model = tiny_vit()
    conv = model.tokenizer.proj
    images = torch.randn(2, 3, 16, 16)
    by_hand = V.patchify(images, 4) @ conv.weight.reshape(16, -1).T + conv.bias
    assert_close(model.tokens(images), by_hand, atol=1e-5, rtol=1e-5)


def test_vit_class_token_attends_to_every_patch():
    from helpers import collect_attention

    model = tiny_vit().eval()
    with collect_attention(model) as maps:
        model(torch.randn(2, 3, 16, 16))
    assert len(maps) == 2 and maps[0].shape == (2, 2, 17, 17)  # (B, H, 1 + 16, 1 + 16)
    assert (maps[0][:, :, 0, 1:] > 0).all()  # no mask: the class token's query reaches every patch


def test_vit_rejects_bad_options():
    with pytest.raises(ValueError, match="tokenizer"):
        tiny_vit(tokenizer="pixels")
    with pytest.raises(ValueError, match="pool"):
        tiny_vit(pool="max")


@pytest.mark.parametrize("pool", ["cls", "seq"])
def test_attention_map_sums_to_one(pool):
    model = tiny_vit(pool=pool, tokenizer="conv").eval()
    maps = model.attention_map(torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 4, 4)
    assert_close(maps.sum((1, 2)), torch.ones(2))


def test_attention_rollout():
    B, H, T = 2, 3, 5
    eye = torch.eye(T).expand(B, H, T, T)
    assert_close(V.attention_rollout([eye, eye]), torch.eye(T).expand(B, T, T))
    a, b = torch.rand(B, H, T, T).softmax(-1), torch.rand(B, H, T, T).softmax(-1)
    assert_close(V.attention_rollout([a, b], residual=False), b.mean(1) @ a.mean(1))
    assert_close(V.attention_rollout([a, b]).sum(-1), torch.ones(B, T))


def test_vit_learns_a_toy_task():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (256,))
    images = torch.randn(256, 3, 16, 16) * 0.5
    images[labels == 1, :, :, :8] += 1.0  # class 1: a bright left half
    model = tiny_vit(pool="seq")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        idx = torch.randint(0, 256, (64,))
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert V.accuracy(model, images, labels) > 0.95


def test_resnet_shape_and_checkpoint_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    resnet = V.ResNet(V.ResNetConfig(channels=(8, 16), blocks=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert resnet(x).shape == (2, 10)
    vit = tiny_vit(tokenizer="conv", pool="seq").eval()
    save_checkpoint(vit, "00_vit", mean=list(V.CIFAR10_MEAN))
    again = load_checkpoint("00_vit")
    assert type(again) is V.VisionTransformer and again.config == vit.config
    assert torch.equal(again(x[:, :, :16, :16]), vit(x[:, :, :16, :16]))
    save_checkpoint(resnet, "00_resnet")
    assert torch.equal(load_checkpoint("00_resnet")(x), resnet(x))


# --------------------------------------------------------------------------- CIFAR-10 data


@pytest.fixture
def offline_dirs(data_dirs, monkeypatch):
    """Empty cache and mirror folders, offline: a loader can only use what a test writes there."""
    monkeypatch.setenv("TFS_OFFLINE", "1")
    return data_dirs


def test_cifar_reads_the_torchvision_layout(offline_dirs):
    cache, _ = offline_dirs
    folder = cache / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)  # rows: 1024 red, 1024 green, 1024 blue
        labels = rng.integers(0, 10, 4).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
        written[name] = (data, labels)
    images, labels = V.load_cifar10("test")
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == written["test_batch"][1]
    assert images[2, 1, 0, 5].item() == written["test_batch"][0][2, 1024 + 5]  # green channel, row 0, column 5
    train_images, train_labels = V.load_cifar10("train")
    assert train_images.shape == (20, 3, 32, 32) and len(train_labels) == 20


def _write_image_folder(root, per_class=2):
    from torchvision.io import write_png

    images, labels = [], []
    for label, name in enumerate(V.CIFAR10_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
            write_png(img, str(root / name / f"{i:04d}.png"))  # lossless, so pixels compare exactly
            images.append(img)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def _register_folder(monkeypatch, root, split):
    """Make the registry's digest of cifar10-jpg/<split> that of the folder a test wrote."""
    import dataclasses

    from helpers.data import FolderDigest, folder_sha256

    digest, count = folder_sha256(root)
    info = V.cifar.CIFAR10_DATA
    folders = tuple(FolderDigest(f.path, digest, count) if f.path.endswith(split) else f for f in info.folders)
    monkeypatch.setattr(V.cifar, "CIFAR10_DATA", dataclasses.replace(info, folders=folders))


def test_cifar_reads_the_image_folder_layout_in_the_mirror_and_caches_it(offline_dirs, monkeypatch):
    cache, mirror = offline_dirs
    root = mirror / "cifar10-jpg" / "test"
    expected, expected_labels = _write_image_folder(root)
    _register_folder(monkeypatch, root, "test")
    images, labels = V.load_cifar10("test")
    assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
    assert len(list((cache / "cache").glob("imagefolder-test-*.pt"))) == 1  # decoded once, cached
    again, _ = V.load_cifar10("test")
    assert torch.equal(again, expected)
    assert not (cache / "cifar10-jpg").exists()  # the mirror is read in place, never copied


def test_cifar_image_folder_that_differs_from_the_registry_is_refused(offline_dirs, monkeypatch):
    from helpers.data import ChecksumError

    cache, mirror = offline_dirs
    root = mirror / "cifar10-jpg" / "test"
    _write_image_folder(root)
    _register_folder(monkeypatch, root, "test")
    (root / "cat" / "0000.png").write_bytes((root / "dog" / "0000.png").read_bytes())  # one changed image
    with pytest.raises(ChecksumError, match="cifar10: the folder .* does not match its registered SHA-256"):
        V.load_cifar10("test")
    assert not (cache / "cache").exists()  # nothing decoded, nothing cached


def test_cifar_offline_without_data_says_what_to_do(offline_dirs):
    with pytest.raises(OfflineError, match="TFS_DATA_MIRROR"):
        V.load_cifar10("train")
    with pytest.raises(ValueError, match="split"):
        V.load_cifar10("validation")


def test_cifar_mirror_subset(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("TFS_DATA_DIR", str(tmp_path))
    images, labels = V.load_cifar10("test")
    assert images.shape == (2000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.bincount().tolist() == [200] * 10
    mean = images.float().mean((0, 2, 3)) / 255
    assert_close(mean, torch.tensor(V.CIFAR10_MEAN), atol=0.02, rtol=0)  # the subset looks like CIFAR-10


def test_random_crop_flip_is_a_shifted_window():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = V.random_crop_flip(images, padding=2, generator=g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    for b in range(6):
        windows = [padded[b, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[b], w) for w in windows)
    assert torch.equal(V.random_crop_flip(images, padding=0, generator=g).flip(-1).sort(-1).values,
                       images.sort(-1).values)  # no padding: only flips


def test_image_batches_visit_every_image_once_per_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 4, 4).contiguous()
    labels = torch.arange(10)
    batches = V.ImageBatches(images, labels, 5, augment=False, mean=(0, 0, 0), std=(1, 1, 1))
    assert len(batches) == 2
    seen = torch.cat([batches(0)[1], batches(1)[1]])
    assert sorted(seen.tolist()) == list(range(10))
    x, y = batches(2)  # the next epoch, a new order
    assert_close(x[:, 0, 0, 0] * 255, y.float())  # images still go with their labels


@pytest.mark.parametrize("levels", [None, 4])
@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_guidance_is_a_no_op_when_the_label_changes_nothing(levels, conditioning):
    torch.manual_seed(0)
    model = V.PatchGPT(V.PatchGPTConfig(patch_size=7, levels=levels, n_layer=1, n_head=2, n_embd=16,
                                        conditioning=conditioning)).eval()
    table = model.condition if conditioning == "cross" else model.start
    with torch.no_grad():
        table.weight.copy_(table.weight[:1].expand_as(table.weight))  # every label the same
    labels = torch.tensor([3, 7])
    plain = model.sample(labels, noise=0.1, generator=torch.Generator().manual_seed(1))
    guided = model.sample(labels, noise=0.1, guidance=2.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(guided, plain)


@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
def test_guidance_changes_samples_and_needs_labels(conditioning):
    torch.manual_seed(0)
    model = V.PatchGPT(V.PatchGPTConfig(patch_size=7, levels=4, n_layer=1, n_head=2, n_embd=16,
                                        conditioning=conditioning)).eval()
    with torch.no_grad():
        (model.condition if conditioning == "cross" else model.start).weight.normal_()
    labels = torch.tensor([3, 7])
    plain = model.sample(labels, generator=torch.Generator().manual_seed(1))
    guided = model.sample(labels, guidance=3.0, generator=torch.Generator().manual_seed(1))
    assert guided.shape == plain.shape == (2, 1, 28, 28)
    assert not torch.equal(guided, plain)
    with pytest.raises(ValueError, match="guidance needs labels"):
        model.sample(n=2, guidance=1.0)
