"""Classifying images (notebook 06): a Vision Transformer on the shared :class:`~helpers.model.Encoder`,
a small ResNet to compare it with, prediction in batches, and attention rollout.

>>> vit = helpers.load_checkpoint("06_image_classification")
>>> vit(normalize(images)).argmax(-1)        # images: (B, 3, 32, 32) uint8
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import mixed_precision
from ..model import Encoder, collect_attention, evaluating, transformer_config


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, prepare=None,
            autocast_dtype="auto") -> torch.Tensor:
    """Logits (N, n_classes), float32 on the CPU, for images (N, ...) (anywhere: each batch is moved to the
    model's device) in batches, in eval mode; ``prepare`` maps a batch to the model's input (e.g.
    :func:`~helpers.vision.normalize`). ``autocast_dtype``: as :func:`helpers.evaluate`'s (``"auto"``: the
    hardware's mixed precision, float32 on the CPU). On a GPU, logits computed in batches of other sizes may
    differ in the last bits (another kernel adds in another order); compare them with a tolerance."""
    device = next(model.parameters()).device
    out = []
    with evaluating(model), mixed_precision(device, autocast_dtype):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            out.append(model(prepare(x) if prepare else x).float().cpu())
    return torch.cat(out)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500, prepare=None,
             autocast_dtype="auto") -> float:
    """Fraction of ``images`` whose arg-max class is the label (labels anywhere)."""
    predicted = predict(model, images, batch_size, prepare, autocast_dtype).argmax(-1)
    return (predicted == torch.as_tensor(labels).cpu()).float().mean().item()


@dataclass
class ViTConfig:
    image_size: int = 32
    channels: int = 3
    n_classes: int = 10
    tokenizer: str = "patch"  # "patch": one linear map per p x p patch (ViT); "conv": conv stages (CCT)
    patch_size: int = 4  # "patch" tokenizer
    conv_layers: int = 2  # "conv" tokenizer: conv3x3-BN-ReLU-maxpool stages, each halving the resolution
    conv_width: int = 64  # "conv" tokenizer: channels of the inner stages (the last one has n_embd)
    pool: str = "cls"  # "cls": read a class token; "seq": sequence pooling (attention-weighted mean)
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    mlp_ratio: float = 2.0
    dropout: float = 0.0

    @property
    def grid(self) -> int:
        """Tokens per side: the image's side divided by the patch size, or halved by each conv stage."""
        if self.tokenizer == "patch":
            return self.image_size // self.patch_size
        return self.image_size // 2**self.conv_layers


class PatchEmbedding(nn.Module):
    """ViT's tokenizer: a linear map of each p x p patch, written as a convolution of kernel and stride p.
    (B, C, H, W) -> (B, C', H/p, W/p)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"patch_size={cfg.patch_size} does not divide image_size={cfg.image_size}")
        self.proj = nn.Conv2d(cfg.channels, cfg.n_embd, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, images):
        return self.proj(images)


class ConvTokenizer(nn.Module):
    """A convolutional tokenizer, as in the Compact Convolutional Transformer: ``conv_layers`` stages
    of conv3x3, BatchNorm, ReLU and a 3x3 max-pool of stride 2. Overlapping windows and a built-in
    bias for local structure; the BatchNorm (as in the convolutional stems of Xiao et al., 2021)
    speeds up the start of training. (B, C, H, W) -> (B, n_embd, H / 2^k, W / 2^k)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        widths = [cfg.channels] + [cfg.conv_width] * (cfg.conv_layers - 1) + [cfg.n_embd]
        layers = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(3, 2, 1)]
        self.stages = nn.Sequential(*layers)

    def forward(self, images):
        return self.stages(images)


class VisionTransformer(nn.Module):
    """A Vision Transformer: tokenizer -> tokens (B, T, C) -> shared :class:`Encoder` -> logits.

    ``pool="cls"`` prepends a class token and classifies from its final state (ViT);
    ``pool="seq"`` has no class token and classifies an attention-weighted mean of all the tokens'
    states, the weights a softmax over a learned score of each token (CCT's sequence pooling).
    Learned position embeddings come from the Encoder.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if cfg.tokenizer not in ("patch", "conv"):
            raise ValueError(f"tokenizer must be 'patch' or 'conv', not {cfg.tokenizer!r}")
        if cfg.pool not in ("cls", "seq"):
            raise ValueError(f"pool must be 'cls' or 'seq', not {cfg.pool!r}")
        self.config = cfg
        self.tokenizer = PatchEmbedding(cfg) if cfg.tokenizer == "patch" else ConvTokenizer(cfg)
        cls = cfg.pool == "cls"
        self.encoder = Encoder(transformer_config(
            cfg, vocab_size=None, block_size=cfg.grid**2, d_ff=int(cfg.mlp_ratio * cfg.n_embd), cls_token=cls,
            n_out=cfg.n_classes if cls else None,
        ))
        if not cls:
            self.pool_score = nn.Linear(cfg.n_embd, 1)
            self.head = nn.Linear(cfg.n_embd, cfg.n_classes)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, T, n_embd), the feature map read row by row."""
        return self.tokenizer(images).flatten(2).transpose(1, 2)

    def pool_weights(self, states: torch.Tensor) -> torch.Tensor:
        """Sequence pooling's weights (B, T) over the tokens' final states (B, T, C)."""
        return self.pool_score(states).squeeze(-1).softmax(-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, C, H, W) -> logits (B, n_classes)."""
        if self.config.pool == "cls":
            return self.encoder.classify(self.tokens(images))
        states = self.encoder(self.tokens(images))  # (B, T, C): no class token, per-token states
        pooled = torch.einsum("bt,btc->bc", self.pool_weights(states), states)
        return self.head(pooled)

    @torch.no_grad()
    def attention_map(self, images: torch.Tensor) -> torch.Tensor:
        """Where the classification looks, by attention rollout: (B, C, H, W) -> (B, grid, grid), each
        map summing to 1, on the model's device (the images are moved there). With a class token, its row of
        the rollout; with sequence pooling, the rollout weighted by the pooling weights."""
        images = images.to(next(self.parameters()).device)
        with collect_attention(self) as maps:
            states = self.encoder(self.tokens(images))
        rollout = attention_rollout(maps)  # (B, T', T')
        if self.config.pool == "cls":
            weights = rollout[:, 0, 1:]
        else:
            weights = torch.einsum("bt,bts->bs", self.pool_weights(states), rollout)
        weights = weights / weights.sum(-1, keepdim=True)
        g = self.config.grid
        return weights.reshape(-1, g, g)


def attention_rollout(maps: list[torch.Tensor], residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema, 2020): how much each output position draws on each input
    token through all the layers. maps: one (B, H, T, T) per layer -> (B, T, T).

    Each layer's heads are averaged; with ``residual`` the identity is added (the residual connection
    carries a token's own state forward) and the rows renormalised; the layers' maps are multiplied.
    """
    rollout = None
    for weights in maps:
        a = weights.float().mean(1)  # (B, T, T)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.size(-1), device=a.device)
            a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    return rollout


@dataclass
class ResNetConfig:
    channels: tuple[int, ...] = (32, 64, 128)  # one stage per width; each after the first halves the resolution
    blocks: int = 1  # residual blocks per stage
    in_channels: int = 3
    n_classes: int = 10


class ResidualBlock(nn.Module):
    """Two conv3x3-BatchNorm layers plus the input (1x1-projected when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 32x32 images: a conv stem, residual stages, global average pooling, a linear
    head. (B, 3, 32, 32) normalised -> logits (B, n_classes)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.config = cfg
        c0 = cfg.channels[0]
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        blocks, c_in = [], c0
        for i, c in enumerate(cfg.channels):
            for j in range(cfg.blocks):
                blocks.append(ResidualBlock(c_in, c, stride=2 if i > 0 and j == 0 else 1))
                c_in = c
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, cfg.n_classes)

    def forward(self, images):
        h = self.stages(self.stem(images))  # (B, C, H / 2^(stages-1), W / 2^(stages-1))
        return self.head(h.mean((2, 3)))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
