"""Notebook 12's diffusion pieces against diffusers (DDPMScheduler, DDIMScheduler, Timesteps,
TimestepEmbedding, the DiT block), and the DiT's behaviour: identity at initialisation, guidance,
determinism, checkpoints, clear errors."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from helpers import load_checkpoint, save_checkpoint
from helpers.model import Block, Encoder, TransformerConfig
from helpers.vision import diffusion as D

diffusers = pytest.importorskip("diffusers")


def tiny(**overrides) -> D.DiT:
    return D.DiT(D.DiTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, freq_dim=16, train_steps=100), **overrides}))


# --------------------------------------------------------------------------- schedules and sampler steps


@pytest.mark.parametrize("schedule,name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_schedule_and_add_noise_match_diffusers(schedule, name):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
    betas = D.make_betas(schedule, 1000)
    assert_close(betas, ref.betas)
    abar = D.alphas_cumprod(betas)
    assert_close(abar, ref.alphas_cumprod)
    x0, noise = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    assert_close(D.q_sample(x0, t, noise, abar), ref.add_noise(x0, noise, t))


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="schedule='quadratic'; use one of linear, cosine"):
        D.make_betas("quadratic")
    with pytest.raises(ValueError, match="schedule"):
        D.DiTConfig(schedule="quadratic")


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("t", [999, 400, 0])
def test_one_ddpm_step_matches_diffusers(schedule, t):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=True)
    abar = ref.alphas_cumprod.clone()
    x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    expected = ref.step(eps, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert_close(D.ddpm_step(x, eps, t, abar, noise=noise, clip=1.0), expected)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_ddim_timesteps_and_steps_match_diffusers(eta, clip):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                  clip_sample=clip is not None, set_alpha_to_one=True)
    ref.set_timesteps(25)
    ts = D.ddim_timesteps(1000, 25)
    assert torch.equal(ts, ref.timesteps)
    abar = ref.alphas_cumprod.clone()
    prevs = ts[1:].tolist() + [-1]
    for t, t_prev in [(int(ts[0]), prevs[0]), (int(ts[12]), prevs[12]), (int(ts[-1]), -1)]:
        x, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
        expected = ref.step(eps, t, x, eta=eta, use_clipped_model_output=True,  # the noise re-derived from the clipped x0
                            generator=torch.Generator().manual_seed(3)).prev_sample
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        assert_close(D.ddim_step(x, eps, t, t_prev, abar, eta=eta, noise=noise, clip=clip), expected)


def test_ddim_timesteps_reject_bad_counts():
    with pytest.raises(ValueError, match="between 1 and the 1000 training steps"):
        D.ddim_timesteps(1000, 0)


# --------------------------------------------------------------------------- embeddings and the adaLN-Zero block


@pytest.mark.parametrize("flip,shift", [(True, 1), (True, 0), (False, 1)])
def test_timestep_embedding_matches_diffusers(flip, shift):
    from diffusers.models.embeddings import TimestepEmbedding, Timesteps

    t = torch.tensor([0, 1, 17, 500, 999])
    assert_close(D.timestep_embedding(t, 64, flip, shift), Timesteps(64, flip, shift)(t))
    ref = TimestepEmbedding(64, 48)
    ours = nn.Sequential(nn.Linear(64, 48), nn.SiLU(), nn.Linear(48, 48))
    ours[0].load_state_dict(ref.linear_1.state_dict())
    ours[2].load_state_dict(ref.linear_2.state_dict())
    assert_close(ours(D.timestep_embedding(t, 64)), ref(Timesteps(64, True, 1)(t)))


def test_dit_condition_matches_diffusers_combined_embedding():
    from diffusers.models.embeddings import CombinedTimestepLabelEmbeddings

    model = tiny(n_embd=32, freq_dim=256)
    ref = CombinedTimestepLabelEmbeddings(10, 32).eval()
    ref.timestep_embedder.linear_1.load_state_dict(model.time_mlp[0].state_dict())
    ref.timestep_embedder.linear_2.load_state_dict(model.time_mlp[2].state_dict())
    ref.class_embedder.embedding_table.load_state_dict(model.label.state_dict())
    t, y = torch.tensor([3, 50, 99]), torch.tensor([0, 7, 10])
    assert_close(model.condition(t, y), ref(t, y, hidden_dtype=torch.float32))


def test_adaln_zero_block_matches_diffusers_dit_block():
    from diffusers.models.attention import BasicTransformerBlock

    C, H = 32, 4
    ref = BasicTransformerBlock(C, H, C // H, activation_fn="gelu-approximate", num_embeds_ada_norm=10,
                                attention_bias=True, norm_type="ada_norm_zero", norm_elementwise_affine=False,
                                norm_eps=1e-6).eval()
    for p in ref.parameters():  # diffusers also starts its gates at zero: randomise, so the test sees them
        nn.init.normal_(p, 0.0, 0.2)
    cfg = TransformerConfig(n_embd=C, n_head=H, adaln=True, activation="gelu_tanh", layer_norm_eps=1e-6)
    ours = Block(cfg).eval()
    with torch.no_grad():
        ours.ada[1].weight.copy_(ref.norm1.linear.weight)
        ours.ada[1].bias.copy_(ref.norm1.linear.bias)
        a = ref.attn1
        ours.attn.qkv.weight.copy_(torch.cat([a.to_q.weight, a.to_k.weight, a.to_v.weight]))
        ours.attn.qkv.bias.copy_(torch.cat([a.to_q.bias, a.to_k.bias, a.to_v.bias]))
        ours.attn.proj.weight.copy_(a.to_out[0].weight)
        ours.attn.proj.bias.copy_(a.to_out[0].bias)
        ours.mlp.fc.load_state_dict(ref.ff.net[0].proj.state_dict())
        ours.mlp.proj.load_state_dict(ref.ff.net[2].state_dict())
    x, t, y = torch.randn(2, 9, C), torch.tensor([10, 900]), torch.tensor([3, 8])
    cond = ref.norm1.emb(t, y, hidden_dtype=torch.float32)  # the time + class vector, (B, C)
    assert_close(ours(x, cond=cond), ref(x, timestep=t, class_labels=y), rtol=1e-5, atol=1e-5)


def test_adaln_blocks_and_the_dit_start_as_the_identity():
    cfg = TransformerConfig(n_layer=3, n_embd=32, n_head=4, adaln=True, cls_token=False, block_size=16)
    enc = Encoder(cfg)
    x, cond = torch.randn(2, 16, 32), torch.randn(2, 32)
    for block in enc.blocks:
        assert torch.equal(block(x, cond=cond), x)  # the gates are zero: both branches add nothing
    model = tiny()
    x_t = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x_t, torch.tensor([5, 60]), torch.tensor([1, 2])), torch.zeros_like(x_t))
    with pytest.raises(ValueError, match="pass cond"):
        enc.blocks[0](x)


def test_adaln_is_off_by_default_and_leaves_plain_models_unchanged():
    cfg = TransformerConfig(n_embd=32, n_head=4)
    block = Block(cfg)
    assert not cfg.adaln and not hasattr(block, "ada")
    assert set(Encoder(cfg).state_dict()) == set(Encoder(TransformerConfig(n_embd=32, n_head=4)).state_dict())
    assert all(isinstance(m.weight, nn.Parameter) for m in (block.ln1, block.ln2))
    with pytest.raises(ValueError, match="pre-norm"):
        Block(TransformerConfig(n_embd=32, n_head=4, adaln=True, norm_first=False))


# --------------------------------------------------------------------------- the DiT


def trained_a_little(model: D.DiT) -> D.DiT:
    with torch.no_grad():  # open the gates, so that the labels matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_guidance_scale_zero_is_unconditional_and_one_conditional():
    model = trained_a_little(tiny())
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    uncond, cond = model(x, torch.tensor(40), None), model(x, torch.tensor(40), y)
    assert not torch.allclose(uncond, cond)
    assert_close(model.guided_eps(x, 40, y, 0.0), uncond)
    assert_close(model.guided_eps(x, 40, y, 1.0), cond)
    assert_close(D.guide(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


def test_ddim_with_one_seed_is_deterministic_and_ddpm_runs():
    model = trained_a_little(tiny())
    y = torch.tensor([1, 2, 3])
    a = model.sample(y, steps=5, guidance=2.0, generator=torch.Generator().manual_seed(0))
    b = model.sample(y, steps=5, guidance=2.0, generator=torch.Generator().manual_seed(0))
    c = model.sample(y, steps=5, guidance=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 1, 28, 28) and a.min() >= 0 and a.max() <= 1
    images, path = model.sample(n=2, method="ddpm", generator=torch.Generator().manual_seed(0), trajectory=True)
    assert images.shape == (2, 1, 28, 28) and len(path) == 100


def test_the_loss_falls_when_training():
    torch.manual_seed(0)
    model = tiny()
    images = torch.rand(16, 1, 28, 28).round()  # a fixed batch of binary images
    labels = torch.arange(16) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss = model.loss(images, labels, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_ema_averages_the_weights():
    model = tiny()
    ema = D.EMA(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(model)  # the first update averages with weight min(0.5, 1 / 10) on the old weights
    for avg, old, new in zip(ema.model.parameters(), before, model.parameters(), strict=True):
        assert_close(avg, 0.1 * old + 0.9 * new)


def test_checkpoint_round_trip(tmp_path):
    model = trained_a_little(tiny(schedule="linear"))
    path = save_checkpoint(model, tmp_path / "dit.pt", val_loss=0.1)
    again = load_checkpoint(path)
    assert isinstance(again, D.DiT) and again.config == model.config
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 70]), torch.tensor([4, 10])
    assert torch.equal(again(x, t, y), model(x, t, y))
    assert_close(again.abar, model.abar)


def test_bad_inputs_are_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"images must be \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"labels must be 0..9 \(or 10 for 'any class'\), got 3..11"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([3, 11]))
    with pytest.raises(ValueError, match="labels must be 0..9"):
        model.sample(torch.tensor([-1]), steps=2)
    with pytest.raises(ValueError, match="pass labels or the number of images n"):
        model.sample()
    with pytest.raises(ValueError, match="method='euler'"):
        model.sample(n=1, method="euler")
    with pytest.raises(ValueError, match="patch_size=5 does not divide image_size=28"):
        D.DiTConfig(patch_size=5)



def test_frechet_distance_matches_the_formula_with_scipys_matrix_root():
    linalg = pytest.importorskip("scipy.linalg")
    x = torch.randn(500, 4, dtype=torch.float64)
    assert abs(D.frechet_distance(x, x)) < 1e-9
    y = torch.randn(800, 4, dtype=torch.float64) @ torch.randn(4, 4, dtype=torch.float64) + 1  # correlated
    s_x, s_y = torch.cov(x.T).numpy(), torch.cov(y.T).numpy()
    expected = ((x.mean(0) - y.mean(0)) ** 2).sum().item() + (s_x + s_y - 2 * linalg.sqrtm(s_x @ s_y).real).trace()
    assert abs(D.frechet_distance(x, y) - expected) < 1e-8


def test_min_snr_weights_each_images_error_by_min_snr_over_snr():
    plain, weighted = tiny(class_dropout=0.0), tiny(class_dropout=0.0, min_snr=5.0)
    weighted.load_state_dict(trained_a_little(plain).state_dict())
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6)
    gen = torch.Generator().manual_seed(0)
    t = torch.randint(0, 100, (6,), generator=gen)
    noise = torch.randn(6, 1, 28, 28, generator=gen)
    error = (plain(D.q_sample(images * 2 - 1, t, noise, plain.abar), t, labels) - noise).square().flatten(1).mean(1)
    snr = plain.abar[t] / (1 - plain.abar[t])
    assert_close(weighted.loss(images, labels, generator=torch.Generator().manual_seed(0)),
                 (error * snr.clamp(max=5.0) / snr).mean())
    assert_close(plain.loss(images, labels, generator=torch.Generator().manual_seed(0)), error.mean())
