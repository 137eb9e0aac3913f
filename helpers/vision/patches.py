"""Images as sequences of patches, and grey levels as integers (notebooks 05 and 06).

An image ``(C, H, W)`` cut into ``p x p`` patches is a sequence of ``(H/p) * (W/p)`` vectors of
``C * p * p`` pixels (:func:`patchify`, undone by :func:`unpatchify`). Quantized to a few grey levels
(:func:`quantize`), a whole patch can be named by one integer (:func:`patch_codes`).
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------- patches


class PatchGrid:
    """The sizes of a config's patch sequence, from its ``image_size``, ``patch_size`` and ``channels``
    (notebook 05's ``PatchGPTConfig`` and notebook 12's ``DiTConfig``)."""

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2


def _as_bchw(images: torch.Tensor) -> torch.Tensor:
    if images.dim() == 3:  # (B, H, W): one channel, as MNIST
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"expected images (B, C, H, W) or (B, H, W), got shape {tuple(images.shape)}")
    return images


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into non-overlapping square patches, row by row (raster order).

    images: (B, C, H, W) or (B, H, W) -> (B, N, C * p * p) with N = (H / p) * (W / p). Inside a patch
    the pixels are ordered (channel, row, column), the layout of a ``Conv2d`` weight, so a linear
    map of the patches equals a convolution with kernel and stride ``p``.
    """
    x = _as_bchw(images)
    B, C, H, W = x.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"a {H}x{W} image does not split into {p}x{p} patches; pick a patch size dividing {H} and {W}")
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, rows, p, cols, p)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, p, p)
    return x.reshape(B, (H // p) * (W // p), C * p * p)


def unpatchify(patches: torch.Tensor, patch_size: int, image_size, channels: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C * p * p) -> (B, C, H, W). ``image_size`` is H or (H, W)."""
    H, W = (image_size, image_size) if isinstance(image_size, int) else image_size
    p, C = patch_size, channels
    B, N, D = patches.shape
    if N != (H // p) * (W // p) or D != C * p * p:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not make {C}x{H}x{W} images with {p}x{p} patches "
            f"(expected (B, {(H // p) * (W // p)}, {C * p * p}))"
        )
    x = patches.reshape(B, H // p, W // p, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, rows, p, cols, p)
    return x.reshape(B, C, H, W)


# --------------------------------------------------------------------------- quantization


def quantize(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Intensities in [0, 1] -> integers 0..levels-1 (rounded to the nearest of ``levels`` grey levels)."""
    if levels < 2:
        raise ValueError(f"levels must be at least 2, not {levels}")
    return (x.float().clamp(0, 1) * (levels - 1)).round().long()


def dequantize(q: torch.Tensor, levels: int) -> torch.Tensor:
    """Integers 0..levels-1 -> intensities ``q / (levels - 1)`` in [0, 1]: black stays 0, white 1."""
    return q.float() / (levels - 1)


def patch_codes(q_patches: torch.Tensor, levels: int) -> torch.Tensor:
    """One token per quantized patch: (B, N, P) ints in 0..levels-1 -> (B, N) codes in 0..levels**P - 1.

    The patch's P pixels are the digits of a base-``levels`` number, so the code names the whole patch
    jointly (as Image GPT's 512-colour palette names the three channels of a pixel jointly).
    """
    P = q_patches.size(-1)
    place = levels ** torch.arange(P, device=q_patches.device)  # (P,) 1, L, L^2, ...
    return (q_patches * place).sum(-1)


def codes_to_patches(codes: torch.Tensor, levels: int, patch_dim: int) -> torch.Tensor:
    """Inverse of :func:`patch_codes`: (B, N) codes -> (B, N, P) ints in 0..levels-1."""
    place = levels ** torch.arange(patch_dim, device=codes.device)
    return (codes.unsqueeze(-1) // place) % levels
