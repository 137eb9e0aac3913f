"""Generating MNIST digits (notebook 05): a GPT over patches, and a small CNN that judges the samples.

:class:`PatchGPT` predicts each patch of an image from the patches above and to the left of it,
continuous (trained with a mean-squared error) or quantized (cross-entropy, a likelihood), optionally
conditioned on the digit, by a start token (prefix) or by cross-attention; :class:`DigitClassifier` reads generated digits, so that "does the sample look
like the digit it was asked for" becomes a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import draw
from ..model import GPT, transformer_config
from .patches import PatchGrid, _as_bchw, dequantize, patchify, quantize, unpatchify

CONDITIONINGS = ("prefix", "cross")


@dataclass
class PatchGPTConfig(PatchGrid):
    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    levels: int | None = None  # None: continuous pixels, mean-squared error; L: L grey levels, cross-entropy
    n_classes: int = 10  # conditions 0..n_classes-1 name a class; condition n_classes means "any class"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # "prefix": the class chooses the start token; "cross": every block cross-attends to the class's embedding
    # (the original tutorial's GPT-2 with add_cross_attention). Older checkpoints have no field: "prefix".
    conditioning: str = "prefix"

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning={self.conditioning!r}; use one of {', '.join(CONDITIONINGS)}")


class PatchGPT(nn.Module):
    """An autoregressive transformer over patches: it predicts each patch from the patches above and
    to the left of it. The shared :class:`~helpers.model.GPT` with a linear input embedding of a
    patch's pixels and an output head for the next patch's pixels.

    The sequence starts with a start token. With ``conditioning="prefix"`` it is a learned vector chosen
    by the class label (or the "any class" vector ``n_classes`` for unconditional generation)::

        input   [start(y), patch_1, ..., patch_{N-1}]   (B, N, C)
        output  [patch_1,  patch_2, ..., patch_N]        (B, N, P) values, or (B, N, P, L) logits

    With ``conditioning="cross"`` the start token is one learned vector for every image, and the class
    reaches the model through a memory of one vector, ``condition(y)`` (B, 1, C), that every block
    cross-attends to (keys and values computed once per image when sampling with the cache).

    With ``levels=None`` the head predicts each pixel's value, trained with the mean-squared error. With
    ``levels=L`` pixels are quantized to L grey levels and the head gives a distribution over the levels
    of each pixel, trained with cross-entropy: a likelihood. Inside a patch the pixels come one after
    another: pixel i's logits add a masked linear function of the levels of pixels 0..i-1 of the same
    patch (``within``, as in NADE and MADE), so neighbouring pixels agree instead of being drawn
    independently.
    """

    def __init__(self, cfg: PatchGPTConfig):
        super().__init__()
        self.config = cfg
        cross = cfg.conditioning == "cross"
        self.embed = nn.Linear(cfg.patch_dim, cfg.n_embd)  # a patch's pixels -> a vector
        self.start = nn.Embedding(1 if cross else cfg.n_classes + 1, cfg.n_embd)
        nn.init.normal_(self.start.weight, 0.0, 0.02)
        if cross:  # the memory: one vector per class (and "any class"), unit scale like an encoder's states
            self.condition = nn.Embedding(cfg.n_classes + 1, cfg.n_embd)
        self.gpt = GPT(transformer_config(cfg, vocab_size=None, block_size=cfg.n_patches,
                                          n_out=cfg.patch_dim * (cfg.levels or 1), cross_attention=cross))
        if cfg.levels:  # within a patch, pixel i also sees the levels of pixels 0..i-1 (a masked linear map)
            width = cfg.patch_dim * cfg.levels
            self.within = nn.Linear(width, width, bias=False)
            nn.init.zeros_(self.within.weight)
            pixel = torch.arange(cfg.patch_dim).repeat_interleave(cfg.levels)  # (P * L,) pixel of each unit
            self.register_buffer("within_mask", pixel[:, None] > pixel[None, :], persistent=False)

    def _labels(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B,) class ids on ``device`` (where the model is; labels may come from the CPU)."""
        if labels is None:  # unconditional: the "any class" condition
            return torch.full((batch,), self.config.n_classes, dtype=torch.long, device=device)
        return torch.as_tensor(labels, device=device)

    def _start(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        labels = self._labels(labels, batch, device)
        if self.config.conditioning == "cross":  # one start token; the class is in the memory
            labels = torch.zeros_like(labels)
        return self.start(labels).unsqueeze(1)  # (B, 1, C)

    def _memory(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor | None:
        """What the blocks cross-attend to: (B, 1, C), or None with prefix conditioning."""
        if self.config.conditioning != "cross":
            return None
        return self.condition(self._labels(labels, batch, device)).unsqueeze(1)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> patches (B, N, P), rounded to the grey levels in the discrete model."""
        patches = patchify(images, self.config.patch_size).float()
        levels = self.config.levels
        return dequantize(quantize(patches, levels), levels) if levels else patches

    def forward(self, patches: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, N, P) in [0, 1] on the model's device, labels (B,) (anywhere) or None -> the next patches:
        values (B, N, P), or with ``levels`` logits (B, N, P, levels)."""
        B, N, P = patches.shape
        x = torch.cat([self._start(labels, B, patches.device), self.embed(patches[:, :-1])], dim=1)
        out = self.gpt(x, memory=self._memory(labels, B, patches.device))
        if not self.config.levels:
            return out
        # Teacher forcing inside the patch: pixel i's logits get a term from the true levels of pixels < i.
        onehot = F.one_hot(quantize(patches, self.config.levels), self.config.levels).flatten(2).to(out.dtype)
        out = out + F.linear(onehot, self.within.weight * self.within_mask)  # (B, N, P * L)
        return out.view(B, N, P, self.config.levels)

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) or (B, H, W) in [0, 1] -> the mean-squared error per pixel, or with
        ``levels`` the cross-entropy per pixel in nats (divide by ln 2 for bits per pixel). The images and labels
        may be on the CPU: they are moved to the model's device."""
        patches = self._prepare(images.to(self.embed.weight.device))
        out = self(patches, labels)
        if not self.config.levels:
            return F.mse_loss(out, patches)
        targets = quantize(patches, self.config.levels)  # (B, N, P) ints
        return F.cross_entropy(out.flatten(0, 2).float(), targets.flatten())

    @torch.no_grad()
    def nll_bits(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Discrete model: each image's negative log-likelihood -log2 p(x | y), summed over its pixels,
        in bits: (B,), on the model's device. ``labels=None`` scores the images with the "any class" condition.
        The images and labels may be on the CPU: they are moved to the model's device."""
        if not self.config.levels:
            raise ValueError("nll_bits needs a discrete model (levels=L): a regression model has no likelihood")
        patches = self._prepare(images.to(self.embed.weight.device))
        out = self(patches, labels)  # (B, N, P, L)
        targets = quantize(patches, self.config.levels)
        nats = F.cross_entropy(out.flatten(0, 2).float(), targets.flatten(), reduction="none")
        return nats.view(len(images), -1).sum(1) / math.log(2)

    def _draw(self, out: torch.Tensor, noise: float, temperature: float, generator,
              guidance: float = 0.0) -> torch.Tensor:
        """One patch from the head's output (B, P) or (B, P, L) -> pixels (B, P) in [0, 1].

        With ``guidance`` g the output holds 2B rows, conditional then unconditional, and the patch is
        drawn from ``cond + g * (cond - uncond)`` (classifier-free guidance)."""
        mix = (lambda both: both) if not guidance else (
            lambda both: (1 + guidance) * both[: len(both) // 2] - guidance * both[len(both) // 2:])
        if not self.config.levels:
            out = mix(out)
            if noise:
                out = out + noise * draw(torch.randn, out.shape, generator=generator, device=out.device)
            return out.clamp(0, 1)
        rows, P, L = out.shape
        B = rows // 2 if guidance else rows
        weight = (self.within.weight * self.within_mask).view(P, L, P * L)  # pixel i's rows
        drawn = out.new_zeros(B, P * L)  # one-hot levels of the pixels drawn so far
        u = draw(torch.rand, (B, P, 1), generator=generator, device=out.device)
        for i in range(P):  # pixel by pixel: each sees the ones before it in the patch
            seen = drawn.repeat(2, 1) if guidance else drawn
            logits = mix(out[:, i] + seen @ weight[i].T)  # (B, L)
            if temperature == 0:
                level = logits.argmax(-1)
            else:
                cdf = (logits.float() / temperature).softmax(-1).cumsum(-1)
                level = (u[:, i] > cdf).sum(-1).clamp(max=L - 1)  # inverse-CDF sampling
            drawn[torch.arange(B, device=out.device), i * L + level] = 1
        return dequantize(drawn.view(B, P, L).argmax(-1), L)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor | None = None, n: int | None = None, *, noise: float = 0.0,
               temperature: float = 1.0, guidance: float = 0.0, prefix: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Generate images (B, C, H, W) in [0, 1], one patch at a time with a key-value cache.

        labels (B,) condition on classes; without labels, ``n`` unconditional images (or one per prefix).
        Continuous model: each patch is the predicted value plus Gaussian ``noise`` (0: the mean).
        Discrete model: each pixel is drawn from its predicted levels at ``temperature`` (0: the most
        likely level). ``prefix`` (B, K, P): the first K patches are given (image completion).
        ``guidance`` g > 0 (classifier-free guidance, with labels): every step also runs the model with
        the "any class" start token and draws from ``cond + g * (cond - uncond)``, which pushes samples
        towards what is typical of their class (for a model trained with some labels dropped).
        ``generator``: a CPU generator gives the same random numbers on every device (they are drawn on the CPU
        and moved, :func:`helpers.config.draw`); a generator on the model's device draws there. The images are
        returned on the model's device.
        """
        cfg = self.config
        device = next(self.parameters()).device
        B = labels.size(0) if labels is not None else (prefix.size(0) if prefix is not None else n)
        if B is None:
            raise ValueError("pass labels, a prefix or the number of images n")
        if guidance and labels is None:
            raise ValueError("guidance needs labels: it contrasts the labelled model with the unconditional one")
        rows = 2 * B if guidance else B  # with guidance: B conditional rows, then B unconditional ones
        cache = self.gpt.new_cache(rows)
        x, memory = self._start(labels, B, device), self._memory(labels, B, device)  # (B, 1, C) each
        if guidance:
            x = torch.cat([x, self._start(None, B, device)])  # (2B, 1, C)
            memory = None if memory is None else torch.cat([memory, self._memory(None, B, device)])
        out = []
        for t in range(cfg.n_patches):
            # the memory's keys and values are computed at the first step and kept in the cache
            head = self.gpt(x, cache=cache, memory=memory)[:, -1]  # (rows, P * L): the next patch
            if prefix is not None and t < prefix.size(1):
                patch = prefix[:, t].to(device).float()
            else:
                head = head.view(rows, cfg.patch_dim, cfg.levels) if cfg.levels else head
                patch = self._draw(head, noise, temperature, generator, guidance)
            out.append(patch)
            if t + 1 < cfg.n_patches:
                x = self.embed(patch).unsqueeze(1)
                if guidance:
                    x = x.repeat(2, 1, 1)
        return unpatchify(torch.stack(out, 1), cfg.patch_size, cfg.image_size, cfg.channels)


@dataclass
class DigitClassifierConfig:
    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    n_classes: int = 10
    dropout: float = 0.25


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 digits: two conv-ReLU-maxpool stages and two linear layers.

    Takes images (B, 1, 28, 28) or (B, 28, 28) with intensities in [0, 1] (generated samples as they
    come) -> logits (B, 10). It normalises with MNIST's mean and standard deviation itself.
    """

    def __init__(self, cfg: DigitClassifierConfig):
        super().__init__()
        self.config = cfg
        c1, c2 = cfg.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 49, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.n_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (_as_bchw(images).float() - 0.1307) / 0.3081
        return self.classifier(self.features(x))
