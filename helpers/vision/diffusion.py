"""Generating MNIST digits by denoising (notebook 12): a diffusion transformer (DiT, Peebles & Xie 2022).

The forward process adds Gaussian noise to an image ``x_0`` in ``T`` small steps; in closed form
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (:func:`q_sample`), with ``abar_t`` the product of
``1 - beta_s`` up to ``t`` (:func:`make_betas`: DDPM's linear schedule or the cosine one). :class:`DiT` learns
to predict ``eps`` from ``x_t``, the step ``t`` and the digit; sampling runs the process backwards from pure
noise, one network evaluation per step: :func:`ddpm_step` (ancestral, all ``T`` steps) or :func:`ddim_step`
(deterministic, any subset of the steps), with classifier-free guidance (:func:`guide`) mixing the
conditional and the unconditional prediction.

The conventions are ``diffusers``' (``DDPMScheduler``, ``DDIMScheduler``, ``Timesteps``, the DiT block), so
that every piece can be checked against it: timesteps are integers ``0 .. T - 1``, images live in [-1, 1].
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import draw
from ..model import AdaLNFinal, Encoder, init_weights, transformer_config
from .patches import PatchGrid, _as_bchw, patchify, unpatchify

SCHEDULES = ("linear", "cosine")


# --------------------------------------------------------------------------- the forward process


def make_betas(schedule: str = "cosine", steps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """The noise added at each of ``steps`` steps, (steps,) float32.

    ``"linear"`` (Ho et al. 2020): betas evenly spaced from ``beta_start`` to ``beta_end``. ``"cosine"``
    (Nichol & Dhariwal 2021): ``abar(t) = cos((t/T + 0.008) / 1.008 * pi / 2)^2`` and ``beta_t = 1 -
    abar(t+1) / abar(t)``, capped at 0.999; it destroys the image more evenly over the steps (diffusers'
    ``"squaredcos_cap_v2"``)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    if schedule == "cosine":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)],
                            dtype=torch.float32)
    raise ValueError(f"schedule={schedule!r}; use one of {', '.join(SCHEDULES)}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s): the share of the signal's variance left at step t, (T,)."""
    return torch.cumprod(1.0 - betas, dim=0)


def _at(abar: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """abar[t] (B,) shaped to broadcast against ``like`` (B, ...)."""
    a = abar.to(like.device)[t.to(like.device)]
    return a.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) in closed form: sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0 and noise (B, ...),
    t (B,) integer steps (diffusers' ``add_noise``)."""
    a = _at(abar, t, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The clean image implied by a noise prediction: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, abar: torch.Tensor, noise: torch.Tensor | None = None,
              clip: float | None = None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} (Ho et al. 2020): the mean of q(x_{t-1} | x_t, x0_hat) plus noise of
    variance beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t ("fixed_small"); no noise at t = 0. ``clip``
    clamps the predicted x0 to [-clip, clip] first (diffusers' ``clip_sample``)."""
    a_t = abar[t].to(x_t.device, x_t.dtype)
    a_prev = abar[t - 1].to(x_t.device, x_t.dtype) if t > 0 else torch.ones_like(a_t)
    beta_t = 1 - a_t / a_prev
    x0 = predict_x0(x_t, eps, a_t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + ((1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
    if t == 0:
        return mean
    variance = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
    return mean + variance.sqrt() * noise


def ddim_timesteps(train_steps: int, steps: int) -> torch.Tensor:
    """The ``steps`` timesteps DDIM visits, from the noisiest down: 0, k, 2k, ... reversed with k = T // steps
    (diffusers' "leading" spacing)."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"steps must be between 1 and the {train_steps} training steps, not {steps}")
    return (torch.arange(steps) * (train_steps // steps)).flip(0)


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, abar: torch.Tensor, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip: float | None = None) -> torch.Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021): predict x0, then move to the noise level of t_prev
    along the predicted noise, ``sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise``.
    ``eta = 0`` is deterministic (sigma = 0); ``eta = 1`` has DDPM's variance. t_prev < 0: the last step, abar = 1."""
    a_t = abar[t].to(x_t.device, x_t.dtype)
    a_prev = abar[t_prev].to(x_t.device, x_t.dtype) if t_prev >= 0 else torch.ones_like(a_t)
    x0 = predict_x0(x_t, eps, a_t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise consistent with the clipped x0
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    return x + sigma * noise if eta > 0 else x


def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): eps_uncond + scale * (eps_cond - eps_uncond). Scale 0 is
    the unconditional model, 1 the conditional one, above 1 goes past it, away from "any digit"."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, downscale_freq_shift: float = 1.0,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoids of the step, as the 2017 Transformer's positions: t (B,) -> (B, dim), frequencies from 1 down to
    1 / max_period, cosines first (diffusers' ``Timesteps(dim, flip_sin_to_cos, downscale_freq_shift)``; DiT
    uses shift 1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                      / (half - downscale_freq_shift))  # (half,)
    angles = t.float()[:, None] * freqs[None]  # (B, half)
    sin, cos = angles.sin(), angles.cos()
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """DiT's fixed positions for a side x side grid of patches in raster order, (side * side, dim): half the
    channels are sinusoids of the row, half of the column (:func:`timestep_embedding` of each, sines first)."""
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    def one(pos):
        return timestep_embedding(pos.flatten(), dim // 2, flip_sin_to_cos=False, downscale_freq_shift=0)
    return torch.cat([one(rows), one(cols)], dim=1)


# --------------------------------------------------------------------------- the model


@dataclass
class DiTConfig(PatchGrid):
    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    n_classes: int = 10  # labels 0..n_classes-1 name a class; n_classes means "any class" (dropped label)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    freq_dim: int = 256  # sinusoids of the timestep before the MLP (DiT: 256)
    schedule: str = "cosine"
    train_steps: int = 1000  # T, the steps of the forward process
    class_dropout: float = 0.1  # share of training labels replaced by "any class", for guidance
    # Min-SNR-gamma weighting (Hang et al. 2023): each step's loss weighted by min(SNR_t, gamma) / SNR_t, so the
    # easy low-noise steps do not dominate the gradient; None: the plain, unweighted loss (Ho et al. 2020)
    min_snr: float | None = None

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size={self.patch_size} does not divide image_size={self.image_size}")


class DiT(nn.Module):
    """A diffusion transformer: noisy image, step and digit -> the noise in the image.

    The shared :class:`~helpers.model.Encoder` (no class token, ``adaln=True``) over the patches, conditioned
    by one vector per image, ``c = time_mlp(sinusoids(t)) + label(y)`` (B, C), through adaLN-Zero::

        x_t (B, 1, 28, 28) --patchify--> (B, 49, 16) --embed + positions--> (B, 49, C)
            --blocks(cond=c)--> (B, 49, C) --final(cond=c)--> (B, 49, 16) --unpatchify--> eps (B, 1, 28, 28)

    The gates of every block and the final layer start at zero: the untrained model predicts eps = 0.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        tcfg = transformer_config(cfg, vocab_size=None, block_size=cfg.n_patches, cls_token=False, adaln=True,
                                  activation="gelu_tanh", layer_norm_eps=1e-6)
        self.embed = nn.Linear(cfg.patch_dim, cfg.n_embd)  # a patch's pixels -> a vector
        self.time_mlp = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.n_embd), nn.SiLU(), nn.Linear(cfg.n_embd, cfg.n_embd))
        self.label = nn.Embedding(cfg.n_classes + 1, cfg.n_embd)  # + "any class"
        self.encoder = Encoder(tcfg)
        self.final = AdaLNFinal(tcfg, cfg.patch_dim)
        init_weights(self, cfg.n_layer)  # N(0, 0.02) everywhere, the adaLN-Zero maps zero
        # as DiT: the patch embedding Xavier-uniform, the (learned) positions start as 2-D sinusoids
        nn.init.xavier_uniform_(self.embed.weight)
        side = cfg.image_size // cfg.patch_size
        with torch.no_grad():
            self.encoder.wpe.weight.copy_(sincos_2d(side, cfg.n_embd))
        self.register_buffer("abar", alphas_cumprod(make_betas(cfg.schedule, cfg.train_steps)), persistent=False)

    def _labels(self, labels, batch: int, device) -> torch.Tensor:
        if labels is None:  # unconditional: the "any class" label
            return torch.full((batch,), self.config.n_classes, dtype=torch.long, device=device)
        labels = torch.as_tensor(labels, device=device)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), not {tuple(labels.shape)}")
        if len(labels) and (labels.min() < 0 or labels.max() > self.config.n_classes):
            raise ValueError(f"labels must be 0..{self.config.n_classes - 1} (or {self.config.n_classes} for "
                             f"'any class'), got {labels.min().item()}..{labels.max().item()}")
        return labels

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = _as_bchw(images)
        if tuple(x.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"images must be (B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(images.shape)}")
        return x

    def condition(self, t: torch.Tensor, labels) -> torch.Tensor:
        """The conditioning vector of each image, (B, C): the embedded step plus the embedded label."""
        return self.time_mlp(timestep_embedding(t, self.config.freq_dim)) + self.label(self._labels(labels, len(t), t.device))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels=None) -> torch.Tensor:
        """x_t (B, C, H, W) noisy images, t (B,) integer steps, labels (B,) or None ("any class") -> the
        predicted noise (B, C, H, W)."""
        cfg = self.config
        x_t = self._check(x_t)
        t = torch.as_tensor(t, device=x_t.device)
        c = self.condition(t.expand(len(x_t)) if t.dim() == 0 else t, labels)  # (B, C)
        h = self.encoder(self.embed(patchify(x_t, cfg.patch_size)), cond=c)  # (B, N, C), normalised
        return unpatchify(self.final(h, c), cfg.patch_size, cfg.image_size, cfg.channels)

    def loss(self, images: torch.Tensor, labels=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """The noise-prediction loss ||eps - eps_theta(x_t, t, y)||^2 per pixel (weighted by ``min_snr``), on images (B, C, H, W) in [0, 1]
        (scaled here to [-1, 1]), a uniform random step each, and in training a share ``class_dropout`` of the
        labels replaced by "any class". The images and labels may be on the CPU."""
        cfg = self.config
        device = self.embed.weight.device
        x0 = self._check(images).to(device).float() * 2 - 1
        B = len(x0)
        t = draw(torch.randint, 0, cfg.train_steps, (B,), generator=generator, device=device)
        noise = draw(torch.randn, x0.shape, generator=generator, device=device)
        labels = self._labels(labels, B, device)
        if self.training and cfg.class_dropout:
            drop = draw(torch.rand, (B,), generator=generator, device=device) < cfg.class_dropout
            labels = torch.where(drop, cfg.n_classes, labels)
        error = (self(q_sample(x0, t, noise, self.abar), t, labels) - noise).square().flatten(1).mean(1)  # (B,)
        if cfg.min_snr:
            snr = self.abar[t] / (1 - self.abar[t])
            error = error * snr.clamp(max=cfg.min_snr) / snr
        return error.mean()

    def guided_eps(self, x_t: torch.Tensor, t: int, labels, guidance: float | None) -> torch.Tensor:
        """The noise prediction at step t; with ``guidance`` s (and labels) the conditional and unconditional
        predictions in one batch of 2B, mixed by :func:`guide`."""
        tt = torch.full((len(x_t),), int(t), device=x_t.device)
        if guidance is None or labels is None or guidance == 1:  # the conditional model alone
            return self(x_t, tt, labels)
        if guidance == 0:  # the unconditional model alone
            return self(x_t, tt, None)
        labels = self._labels(labels, len(x_t), x_t.device)
        both = self(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat([labels, torch.full_like(labels, self.config.n_classes)]))
        cond, uncond = both.chunk(2)
        return guide(cond, uncond, guidance)

    @torch.no_grad()
    def sample(self, labels=None, n: int | None = None, *, steps: int = 50, method: str = "ddim", eta: float = 0.0,
               guidance: float | None = None, generator: torch.Generator | None = None, trajectory: bool = False,
               clip: float | None = 1.0):
        """Generate images (B, C, H, W) in [0, 1] from pure noise, one network evaluation per step (two with
        guidance). ``method="ddim"``: ``steps`` of the T training steps, deterministic for eta = 0;
        ``"ddpm"``: ancestral sampling through all T steps. ``guidance`` s: classifier-free guidance (None: the
        conditional model alone). ``generator``: a CPU generator gives the same images on every device.
        ``trajectory``: also return the list of x_t (in [0, 1]) after every step."""
        cfg = self.config
        device = self.embed.weight.device
        B = len(labels) if labels is not None else n
        if B is None:
            raise ValueError("pass labels or the number of images n")
        if labels is not None:
            labels = self._labels(labels, B, device)
        shape = (B, cfg.channels, cfg.image_size, cfg.image_size)
        x = draw(torch.randn, shape, generator=generator, device=device)
        if method == "ddim":
            ts = ddim_timesteps(cfg.train_steps, steps).tolist()
            prevs = ts[1:] + [-1]
        elif method == "ddpm":
            ts = list(range(cfg.train_steps - 1, -1, -1))
        else:
            raise ValueError(f"method={method!r}; use 'ddim' or 'ddpm'")
        path = []
        for i, t in enumerate(ts):
            eps = self.guided_eps(x, t, labels, guidance)
            if method == "ddim":
                noise = draw(torch.randn, shape, generator=generator, device=device) if eta > 0 else None
                x = ddim_step(x, eps, t, prevs[i], self.abar, eta=eta, noise=noise, clip=clip)
            else:
                noise = draw(torch.randn, shape, generator=generator, device=device) if t > 0 else None
                x = ddpm_step(x, eps, t, self.abar, noise=noise, clip=clip)
            if trajectory:
                path.append(((x.clamp(-1, 1) + 1) / 2).cpu())
        images = ((x.clamp(-1, 1) + 1) / 2)
        return (images, path) if trajectory else images


class EMA:
    """An exponential moving average of a model's weights, ``avg = decay * avg + (1 - decay) * w`` after every
    :meth:`update`; ``model`` is the averaged copy (in eval mode), which samples better than the last weights.
    The first updates average over fewer steps (decay min(decay, (1 + n) / (10 + n)), as in TensorFlow)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module):
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, w in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(w.detach(), 1 - d)
        self.updates += 1


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (N, D) and (M, D):
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))``, in float64. With Inception-v3's features this is
    the FID; notebook 12 uses the MNIST judge's penultimate layer, a different (and smaller) scale."""
    a, b = a.double().cpu(), b.double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(s_a)
    root_a = vecs @ vals.clamp(min=0).sqrt().diag() @ vecs.T  # S_a^(1/2)
    # tr (S_a S_b)^(1/2) = tr (S_a^(1/2) S_b S_a^(1/2))^(1/2): the eigenvalues of a symmetric matrix
    cross = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross)
