"""Device discipline without a GPU: every public model API is called with its model on a stand-in accelerator and
its inputs (batches, prompts, labels, generators) on the CPU, as a notebook on a GPU does.

The stand-in is PyTorch's ``meta`` device (tensors with a shape and no data), watched by :class:`FakeAccelerator`,
which makes it behave as CUDA does where it matters here:

* an operation whose tensors are on two devices is an error ("expected all tensors to be on the same device"),
  except what CUDA allows too: copies between devices, 0-dim CPU tensors (numbers), CPU index tensors;
* a random draw with a generator of another device than the tensor drawn is an error
  ("Expected a 'cuda' device type for generator but found 'cpu'");
* reading a meta tensor back to Python or to the CPU (``.item()``, ``.tolist()``, ``.cpu()``) gives zeros, so
  whole loops (training, generation, prediction) run to their end.

Plain ``meta`` alone would not do: it accepts CPU indices into a meta embedding, a CPU input to a meta linear layer
and a CPU generator drawing meta tensors, which CUDA refuses, and it cannot read anything back.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import helpers
from helpers import GPT, Encoder, TransformerConfig, arithmetic, audio, evaluate, fit, music
from helpers import vision as V
from helpers.generate import DecodeStep, _inverse_cdf, generate, sample_next, stream
from helpers.lora import LoRAAdapters
from helpers.seq2seq import EncoderDecoder, EncoderDecoderConfig
from helpers.text import evaluate_lm

aten = torch.ops.aten
META = torch.device("meta")
# Operations that CUDA runs with tensors on two devices: copies, and CPU index tensors into a GPU tensor.
CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten.index.Tensor, aten.index_put_.default,
                aten.index_put.default, aten._index_put_impl_.default, aten.lift_fresh.default}


def _devices(tensors):
    return {t.device for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}


class FakeAccelerator(TorchDispatchMode):
    """``meta`` behaves as a GPU (see the module's docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        generator = kwargs.get("generator")
        if generator is not None:
            target = torch.device(kwargs["device"]) if kwargs.get("device") is not None else (
                tensors[0].device if tensors else torch.device("cpu"))
            if generator.device.type != target.type:
                raise RuntimeError(f"Expected a '{target.type}' device type for generator but found "
                                   f"'{generator.device.type}' ({func})")
        if func not in CROSS_DEVICE and len(_devices(tensors)) > 1:
            raise RuntimeError(f"Expected all tensors to be on the same device, but found {_devices(tensors)} "
                               f"in {func}")
        if func is aten._local_scalar_dense.default and args[0].device == META:  # .item(), int(), bool()
            return False if args[0].dtype == torch.bool else 0.0 if args[0].is_floating_point() else 0
        if func is aten._to_copy.default and args[0].device == META and torch.device(
                kwargs.get("device") or META).type == "cpu":  # .cpu(), .tolist(), .numpy()
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is aten.equal.default and args[0].device == META:  # torch.equal reads both tensors back
            return True
        if func is aten.copy_.default and args[0].device.type == "cpu" and args[1].device == META:
            return args[0].zero_()
        return func(*args, **kwargs)


@pytest.fixture
def accelerator():
    with FakeAccelerator():
        yield META


def on_meta(model):
    return model.to(META)


def is_device_error(err: BaseException) -> bool:
    return "same device" in str(err) or "device type for generator" in str(err)


def tiny_gpt(**kw) -> GPT:
    return GPT(TransformerConfig(**{**dict(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16), **kw}))


# --------------------------------------------------------------------------- the stand-in itself


def test_the_fake_accelerator_refuses_what_cuda_refuses(accelerator):
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="same device"):  # bare meta would accept this one
        F.embedding(ids, torch.zeros(11, 4, device=accelerator))
    with pytest.raises(RuntimeError, match="generator"):  # and this one
        torch.randn(3, device=accelerator, generator=torch.Generator().manual_seed(0))
    x = torch.ones(2, 3, device=accelerator)
    assert (x + torch.tensor(1.0)).device == META  # a 0-dim CPU tensor is a number, on CUDA too
    assert x.sum().item() == 0.0 and x.tolist() == [[0.0] * 3] * 2  # read-backs give zeros


# --------------------------------------------------------------------------- core: GPT, Encoder, generation


def test_a_model_forward_wants_its_inputs_on_the_model_device(accelerator):
    """The contract of every ``forward`` (as of any torch module): the caller moves the inputs; helpers do it."""
    model = on_meta(tiny_gpt())
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="same device"):
        model(ids)
    assert model(ids.to(accelerator)).shape == (1, 3, 11)
    encoder = on_meta(Encoder(TransformerConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, n_out=3)))
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(RuntimeError, match="same device"):
        encoder.classify(ids.to(accelerator), padding_mask=mask)  # a padding mask left on the CPU
    assert encoder.classify(ids.to(accelerator), padding_mask=mask.to(accelerator)).shape == (1, 3)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_moves_the_prompt_and_samples_with_a_cpu_generator(accelerator, use_cache):
    model = on_meta(tiny_gpt())
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])  # on the CPU, as a notebook builds it
    for sampling in (dict(temperature=0), dict(temperature=0.8, top_k=5, top_p=0.9)):
        out = generate(model, prompt, 5, use_cache=use_cache, generator=torch.Generator().manual_seed(0), **sampling)
        assert out.device == META and out.shape == (2, 8)


def test_stream_and_the_decode_step_run_on_the_model_device(accelerator):
    model = on_meta(tiny_gpt())
    assert DecodeStep.for_model(model) is not None  # so stream's tokens after the first go through it
    tokens = list(stream(model, [1, 2, 3], 4, temperature=1.0, generator=torch.Generator().manual_seed(0)))
    assert tokens == [0, 0, 0, 0]  # every read-back of the stand-in is zero


def test_sampling_with_a_generator_of_another_device_is_inverse_cdf_sampling():
    """What sample_next does with a CPU generator for a GPU's logits, checked here on the CPU: the first token whose
    cumulative probability passes a uniform number, so tokens come with their probabilities, never one of zero."""
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.2]])
    u = torch.rand(20_000, 1, generator=torch.Generator().manual_seed(0))
    drawn = _inverse_cdf(probs.expand(20_000, 4), u)
    counts = torch.bincount(drawn.flatten(), minlength=4) / 20_000
    torch.testing.assert_close(counts, probs[0], atol=0.015, rtol=0)
    assert _inverse_cdf(probs, torch.tensor([[0.0]])).item() == 0 and _inverse_cdf(probs, torch.tensor([[0.9999]])).item() == 3


def test_sample_next_draws_with_the_generator_on_its_own_device(accelerator):
    logits = torch.zeros(3, 7, device=accelerator)
    assert sample_next(logits, 1.0, generator=torch.Generator().manual_seed(0)).device == META


def test_encoder_decoder_generate_moves_its_inputs(accelerator):
    model = on_meta(EncoderDecoder(EncoderDecoderConfig(n_layer=1, n_head=2, n_embd=16)))
    src, start = torch.tensor([[3, 4, 5]]), torch.tensor([[1]])
    out = model.generate(src, start, 4, src_mask=torch.ones(1, 3, dtype=torch.bool), temperature=0)
    assert out.device == META and out.shape == (1, 5)


def test_lora_adapters_follow_the_model(accelerator):
    model = on_meta(tiny_gpt())
    adapters = LoRAAdapters.for_model(model, layers=[0], r=2)
    adapters.attach(model)
    assert all(p.device == META for p in adapters.parameters())
    assert generate(model, torch.tensor([[1, 2]]), 3, temperature=0).device == META


# --------------------------------------------------------------------------- training and evaluation


def lm_batches():
    data = torch.arange(200) % 11
    return helpers.text.lm_batches(data, 8, 4), data


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")  # keep_best's copy, read as zeros
def test_fit_and_evaluate_move_cpu_batches_to_the_model(accelerator):
    get_batch, _ = lm_batches()
    model = tiny_gpt()
    history = fit(model, get_batch, steps=4, val_data=get_batch, eval_every=2, eval_batches=2, keep_best=True,
                  patience=3, device=accelerator, progress=False)
    assert next(model.parameters()).device == META and history.steps_done == 4 and len(history.val_loss) == 2
    assert evaluate(model, get_batch, max_batches=2) == 0.0  # ran on the model's device; the stand-in reads zeros


def test_evaluate_lm_moves_cpu_data(accelerator):
    _, data = lm_batches()
    assert evaluate_lm(on_meta(tiny_gpt()), data, block_size=8) == 0.0


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_a_checkpoint_loads_onto_the_device_asked_for(tmp_path):
    path = helpers.save_checkpoint(tiny_gpt(), tmp_path / "tiny.pt")
    model = helpers.load_checkpoint(path, map_location="meta")
    assert {p.device for p in model.parameters()} == {META}
    assert {p.device.type for p in helpers.load_checkpoint(path).parameters()} == {"cpu"}


# --------------------------------------------------------------------------- topics


def test_arithmetic_answers_on_the_model_device(accelerator):
    model = on_meta(arithmetic.ArithmeticModel(arithmetic.ArithmeticConfig(max_digits=3, n_layer=1, n_embd=32)))
    problems = torch.tensor([[12, 345], [7, 8]])
    assert len(arithmetic.predict(model, problems)) == 2
    assert isinstance(arithmetic.solve(model, "12+34"), str)
    assert 0.0 <= arithmetic.evaluate(model, problems) <= 1.0
    model.train()  # the random place-value shift of training is drawn on the model's device
    x, y = arithmetic.training_batches(model.config, 4)(0)
    assert helpers.train.cross_entropy_loss(model, (x.to(accelerator), y.to(accelerator))).device == META


@pytest.mark.parametrize("conditioning", ["prefix", "cross"])
@pytest.mark.parametrize("levels", [None, 4])
def test_patch_gpt_takes_cpu_batches_and_a_cpu_generator(accelerator, conditioning, levels):
    model = on_meta(V.PatchGPT(V.PatchGPTConfig(image_size=8, patch_size=2, n_classes=3, n_layer=1, n_head=2,
                                                n_embd=16, levels=levels, conditioning=conditioning)))
    images, labels = torch.rand(2, 8, 8), torch.tensor([0, 2])  # a batch as train_batch gives it
    assert model.loss(images, labels).device == META
    if levels:
        assert model.nll_bits(images, labels).shape == (2,)
    g = torch.Generator().manual_seed(0)
    for kwargs in (dict(labels=labels, noise=0.1), dict(labels=labels, guidance=1.0), dict(n=2),
                   dict(prefix=V.patchify(images, 2)[:, :3])):
        assert model.sample(generator=g, **kwargs).shape == (2, 1, 8, 8)


def test_image_classifiers_predict_cpu_images(accelerator):
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    vit = on_meta(V.VisionTransformer(V.ViTConfig(image_size=8, patch_size=4, n_classes=3, n_layer=1, n_head=2,
                                                  n_embd=16)))
    resnet = on_meta(V.ResNet(V.ResNetConfig(channels=(4, 8), n_classes=3)))
    for model in (vit, resnet):
        logits = V.predict(model, images, batch_size=4)
        assert logits.device.type == "cpu" and logits.shape == (6, 3)
        assert V.accuracy(model, images, labels, batch_size=4) == pytest.approx(2 / 6)  # logits read as zeros: class 0
        assert V.accuracy(model, images, labels.to(accelerator), batch_size=4) == 1.0  # labels there: read as zeros
    assert vit.attention_map(images).shape == (6, 2, 2)


def test_audio_classifier_and_augmentation_on_the_model_device(accelerator):
    cfg = audio.AudioConfig(n_mels=16, conv_channels=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    for architecture in ("encoder", "causal"):
        model = on_meta(audio.AudioClassifier(audio.AudioConfig(**{**vars(cfg), "architecture": architecture})))
        features = [torch.randn(40, 16), torch.randn(25, 16)]  # on the CPU
        assert model.classify(features).device.type == "cpu"
        x, mask = audio.pad_features([f.to(accelerator) for f in features])
        assert mask.device == META  # the mask goes where the features are
        assert model(x, mask).shape == (2, 10)
    clips = [torch.randn(40, 16, device=accelerator), torch.randn(30, 16, device=accelerator)]
    x, mask = audio.Augment()(clips, torch.Generator().manual_seed(0))
    assert x.device == mask.device == META
    assert audio.confusion_matrix(torch.zeros(3, dtype=torch.long, device=accelerator), [0, 1, 2]).sum() == 3


def test_music_sampling_and_likelihood_with_a_cpu_generator(accelerator):
    chorale_model = on_meta(tiny_gpt(vocab_size=music.VOCAB_SIZE, block_size=32))
    chorale = torch.tensor([[72, 67, 64, 48]] * 12)
    g = torch.Generator().manual_seed(0)
    steps = music.generate_chorale(chorale_model, 10, chorale[:2], temperature=1.0, generator=g)
    assert steps.shape == (12, 4) and steps.device.type == "cpu"
    assert music.chorale_nll(chorale_model, [chorale]) == 0.0
    event_model = on_meta(tiny_gpt(vocab_size=music.EVENT_VOCAB_SIZE, block_size=32))
    assert music.generate_events(event_model, 5, generator=g).shape == (20,)
