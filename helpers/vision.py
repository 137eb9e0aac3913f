"""Vision: images as sequences of patches, for generating MNIST digits (notebook 05) and
classifying CIFAR-10 (notebook 06).

An image ``(C, H, W)`` cut into ``p x p`` patches is a sequence of ``(H/p) * (W/p)`` vectors of
``C * p * p`` pixels (:func:`patchify`, undone by :func:`unpatchify`), ready for the shared
transformer::

    image (1, 28, 28) --patchify(4)--> patches (49, 16) --GPT--> the next patch, one at a time
    image (3, 32, 32) --tokenizer----> tokens (64, C)   --Encoder--> class logits

What lives here, in reading order:

* patches and quantization: :func:`patchify`, :func:`unpatchify`, :func:`quantize`,
  :func:`dequantize`, :func:`patch_codes`, :func:`codes_to_patches` (a quantized patch as one token);
* generation: :class:`PatchGPT`, an autoregressive GPT over patches, continuous (trained with a
  mean-squared error) or quantized (cross-entropy, a likelihood), optionally conditioned on a class
  token; and :class:`DigitClassifier`, a small CNN that judges generated digits;
* CIFAR-10: :func:`load_cifar10` (the full set through torchvision online, the mirror's JPEG subset
  offline; same tensors either way), :func:`random_crop_flip`, :func:`normalize`, :class:`ImageBatches`;
* classification: :class:`VisionTransformer` (the shared :class:`~helpers.model.Encoder` behind a
  patch or convolutional tokenizer, with a class token or sequence pooling), :class:`ResNet` (the
  convolutional baseline), :func:`accuracy`, and :func:`attention_rollout`.

>>> vit = helpers.load_checkpoint("06_image_classification")
>>> vit(normalize(images)).argmax(-1)        # images: (B, 3, 32, 32) uint8
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import is_offline
from .data import DatasetInfo, DataUnavailableError, data_dir, mirror_dir, register
from .model import GPT, Encoder, TransformerConfig

# --------------------------------------------------------------------------- patches


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


# --------------------------------------------------------------------------- generation: a GPT over patches


@dataclass
class PatchGPTConfig:
    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    levels: int | None = None  # None: continuous pixels, mean-squared error; L: L grey levels, cross-entropy
    n_classes: int = 10  # start tokens 0..n_classes-1 name a class; start token n_classes means "any class"
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2


class PatchGPT(nn.Module):
    """An autoregressive transformer over patches: it predicts each patch from the patches above and
    to the left of it. The shared :class:`~helpers.model.GPT` with a linear input embedding of a
    patch's pixels and an output head for the next patch's pixels.

    The sequence starts with a start token, a learned vector chosen by the class label (or the
    "any class" vector ``n_classes`` for unconditional generation)::

        input   [start(y), patch_1, ..., patch_{N-1}]   (B, N, C)
        output  [patch_1,  patch_2, ..., patch_N]        (B, N, P) values, or (B, N, P, L) logits

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
        self.embed = nn.Linear(cfg.patch_dim, cfg.n_embd)  # a patch's pixels -> a vector
        self.start = nn.Embedding(cfg.n_classes + 1, cfg.n_embd)
        nn.init.normal_(self.start.weight, 0.0, 0.02)
        self.gpt = GPT(TransformerConfig(
            vocab_size=None, block_size=cfg.n_patches, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_embd=cfg.n_embd, dropout=cfg.dropout, n_out=cfg.patch_dim * (cfg.levels or 1),
        ))
        if cfg.levels:  # within a patch, pixel i also sees the levels of pixels 0..i-1 (a masked linear map)
            width = cfg.patch_dim * cfg.levels
            self.within = nn.Linear(width, width, bias=False)
            nn.init.zeros_(self.within.weight)
            pixel = torch.arange(cfg.patch_dim).repeat_interleave(cfg.levels)  # (P * L,) pixel of each unit
            self.register_buffer("within_mask", pixel[:, None] > pixel[None, :], persistent=False)

    def _start(self, labels: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if labels is None:  # unconditional: the "any class" start token
            labels = torch.full((batch,), self.config.n_classes, dtype=torch.long, device=device)
        return self.start(labels).unsqueeze(1)  # (B, 1, C)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> patches (B, N, P), rounded to the grey levels in the discrete model."""
        patches = patchify(images, self.config.patch_size).float()
        levels = self.config.levels
        return dequantize(quantize(patches, levels), levels) if levels else patches

    def forward(self, patches: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, N, P) in [0, 1], labels (B,) or None -> the next patches: values (B, N, P), or
        with ``levels`` logits (B, N, P, levels)."""
        B, N, P = patches.shape
        x = torch.cat([self._start(labels, B, patches.device), self.embed(patches[:, :-1])], dim=1)
        out = self.gpt(x)
        if not self.config.levels:
            return out
        # Teacher forcing inside the patch: pixel i's logits get a term from the true levels of pixels < i.
        onehot = F.one_hot(quantize(patches, self.config.levels), self.config.levels).flatten(2).to(out.dtype)
        out = out + F.linear(onehot, self.within.weight * self.within_mask)  # (B, N, P * L)
        return out.view(B, N, P, self.config.levels)

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W) or (B, H, W) in [0, 1] -> the mean-squared error per pixel, or with
        ``levels`` the cross-entropy per pixel in nats (divide by ln 2 for bits per pixel)."""
        patches = self._prepare(images)
        out = self(patches, labels)
        if not self.config.levels:
            return F.mse_loss(out, patches)
        targets = quantize(patches, self.config.levels)  # (B, N, P) ints
        return F.cross_entropy(out.flatten(0, 2).float(), targets.flatten())

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
                out = out + noise * torch.randn(out.shape, generator=generator).to(out.device)
            return out.clamp(0, 1)
        rows, P, L = out.shape
        B = rows // 2 if guidance else rows
        weight = (self.within.weight * self.within_mask).view(P, L, P * L)  # pixel i's rows
        drawn = out.new_zeros(B, P * L)  # one-hot levels of the pixels drawn so far
        u = torch.rand(B, P, 1, generator=generator).to(out.device)
        for i in range(P):  # pixel by pixel: each sees the ones before it in the patch
            seen = drawn.repeat(2, 1) if guidance else drawn
            logits = mix(out[:, i] + seen @ weight[i].T)  # (B, L)
            if temperature == 0:
                level = logits.argmax(-1)
            else:
                cdf = (logits.float() / temperature).softmax(-1).cumsum(-1)
                level = (u[:, i] > cdf).sum(-1).clamp(max=L - 1)  # inverse-CDF sampling
            drawn[torch.arange(B), i * L + level] = 1
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
        ``generator`` is a CPU generator, so samples are the same on every device.
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
        x = self._start(labels, B, device)  # (B, 1, C)
        if guidance:
            x = torch.cat([x, self._start(None, B, device)])  # (2B, 1, C)
        out = []
        for t in range(cfg.n_patches):
            head = self.gpt(x, cache=cache)[:, -1]  # (rows, P * L): the next patch
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


# --------------------------------------------------------------------------- CIFAR-10 data

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, over the training set
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

register(
    DatasetInfo(
        name="cifar10",
        description="CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train, 10,000 test). Online "
        "through torchvision.datasets.CIFAR10, which verifies its own MD5; offline the mirror's JPEG subset "
        "cifar10-jpg/{train,test}/<class>/NNNN.jpg (1,000 train and 200 test images per class). "
        "A folder data set: read by helpers.vision.load_cifar10, not by fetch_file.",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        files=(),
    )
)


def read_cifar10_batches(root, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Read the torchvision layout ``root/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (the
    python pickles of the CIFAR-10 web site) -> images (N, 3, 32, 32) uint8, labels (N,) int64."""
    folder = Path(root) / "cifar-10-batches-py"
    images, labels = [], []
    for name in _CIFAR_SPLITS[_check_split(split)]:
        path = folder / name
        if not path.exists():
            raise DataUnavailableError(f"cifar10: {path} is missing; the folder {folder} is incomplete")
        with open(path, "rb") as fh:  # files verified by torchvision's MD5 on download
            batch = pickle.load(fh, encoding="latin1")
        images.append(torch.as_tensor(batch["data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
        labels.append(torch.as_tensor(batch["labels"], dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    return split


def read_image_folder(folder, classes=None, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an ImageFolder layout ``folder/<class>/<name>.{jpg,png}`` of same-sized images ->
    images (N, 3, H, W) uint8 and labels (N,) int64, class i being the i-th of ``classes``
    (default: the sub-folders in sorted order, as ``torchvision.datasets.ImageFolder`` does).

    Decoding thousands of small files takes seconds, so the tensors are cached in the data folder,
    keyed by the folder's path, and reused while its file names and sizes are unchanged.
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    folder = Path(folder)
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    classes = list(classes) if classes is not None else found
    missing = sorted(set(classes) - set(found))
    if missing:
        raise DataUnavailableError(f"{folder} has no folder for the classes {missing}")
    files = [
        (label, path)
        for label, name in enumerate(classes)
        for path in sorted((folder / name).iterdir())
        if path.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    listing = [f"{path.parent.name}/{path.name}:{path.stat().st_size}" for _, path in files]
    key = hashlib.sha256("\n".join([str(folder.resolve()), *listing]).encode()).hexdigest()[:16]
    cached = data_dir() / "cache" / f"imagefolder-{folder.name}-{key}.pt"
    if cache and cached.exists():
        saved = torch.load(cached, weights_only=True)
        return saved["images"], saved["labels"]

    decoded = [decode_image(read_file(str(path)), mode=ImageReadMode.RGB) for _, path in files]
    sizes = {tuple(img.shape) for img in decoded}
    if len(sizes) != 1:
        raise ValueError(f"the images in {folder} have different sizes {sorted(sizes)}; resize them first")
    images = torch.stack(decoded)  # (N, 3, H, W) uint8
    labels = torch.tensor([label for label, _ in files], dtype=torch.long)
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        torch.save({"images": images, "labels": labels}, tmp)
        tmp.replace(cached)
    return images, labels


def load_cifar10(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 as tensors: images (N, 3, 32, 32) uint8 and labels (N,) int64 (see CIFAR10_CLASSES).

    Looks, in order, for
    1. the full set in torchvision's layout in the data folder (``cifar-10-batches-py``): 50,000 / 10,000;
    2. the JPEG subset ``cifar10-jpg/<split>/<class>/NNNN.jpg`` in the data folder, then in the mirror
       ``$TFS_DATA_MIRROR`` (read in place): 10,000 / 2,000 images;
    3. online: the full set, downloaded by ``torchvision.datasets.CIFAR10`` into the data folder.
    """
    split = _check_split(split)
    cache = data_dir()
    if (cache / "cifar-10-batches-py").is_dir():
        return read_cifar10_batches(cache, split)
    places = [cache] + ([mirror_dir()] if mirror_dir() is not None else [])
    for place in places:
        folder = place / "cifar10-jpg" / split
        if folder.is_dir():
            return read_image_folder(folder, classes=CIFAR10_CLASSES)
    if is_offline():
        looked = " and ".join(str(p / "cifar10-jpg" / split) for p in places)
        raise DataUnavailableError(
            f"cifar10: no CIFAR-10 offline (looked for {cache / 'cifar-10-batches-py'} and {looked}). Point "
            "TFS_DATA_MIRROR at the course data mirror (it holds cifar10-jpg/), or unset TFS_OFFLINE to "
            "download the full set with torchvision."
        )
    from torchvision.datasets import CIFAR10

    CIFAR10(root=str(cache), train=split == "train", download=True)  # downloads and checks the MD5
    return read_cifar10_batches(cache, split)


def normalize(images: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """uint8 images (B, C, H, W) in 0..255 -> float, each channel shifted and scaled to mean 0, std 1."""
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a whole batch at once: pad by ``padding`` (zeros), cut a random crop of the original
    size from each image, and mirror half of the images left to right. (B, C, H, W) -> (B, C, H, W).

    One ``gather`` does it: for every output pixel, the index of the padded pixel it copies."""
    B, C, H, W = images.shape
    padded = F.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    width = W + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (B, 1), generator=generator)  # the crop's offsets
    dx = torch.randint(0, 2 * padding + 1, (B, 1), generator=generator)
    flip = torch.rand(B, 1, generator=generator) < 0.5
    cols = torch.arange(W).expand(B, W)
    cols = torch.where(flip, W - 1 - cols, cols) + dx  # (B, W): a flip reads the columns backwards
    rows = torch.arange(H) + dy  # (B, H)
    index = (rows[:, :, None] * width + cols[:, None, :]).flatten(1)  # (B, H * W) into the padded image
    index = index.to(images.device)[:, None, :].expand(B, C, H * W)
    return padded.flatten(2).gather(2, index).view(B, C, H, W)


class ImageBatches:
    """Mini-batches for :func:`helpers.fit`, as a callable ``step -> (images, labels)``.

    Each epoch visits every image once in a fresh random order; with ``augment`` each batch is
    randomly cropped and flipped (on the uint8 tensors, all at once), then normalised.
    """

    def __init__(self, images, labels, batch_size: int, *, augment: bool = True, padding: int = 4,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD, seed: int = 0):
        self.images, self.labels = images, labels
        self.batch_size, self.augment, self.padding = batch_size, augment, padding
        self.mean, self.std = mean, std
        self.generator = torch.Generator().manual_seed(seed)
        self.steps_per_epoch = len(images) // batch_size  # the last partial batch is dropped
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __call__(self, step: int):
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, torch.randperm(len(self.images), generator=self.generator)
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        x = self.images[idx]
        if self.augment:
            x = random_crop_flip(x, self.padding, self.generator)
        return normalize(x, self.mean, self.std), self.labels[idx]


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, prepare=None) -> torch.Tensor:
    """Logits (N, n_classes) for images (N, ...) in batches; ``prepare`` maps a batch to the model's
    input (e.g. :func:`normalize`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device)
        out.append(model(prepare(x) if prepare else x).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500, prepare=None) -> float:
    """Fraction of ``images`` whose arg-max class is the label."""
    return (predict(model, images, batch_size, prepare).argmax(-1) == labels).float().mean().item()


# --------------------------------------------------------------------------- classification: ViT and ResNet


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
        self.encoder = Encoder(TransformerConfig(
            vocab_size=None, block_size=cfg.grid**2, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
            d_ff=int(cfg.mlp_ratio * cfg.n_embd), dropout=cfg.dropout, cls_token=cls,
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
            return self.encoder(self.tokens(images))
        states = self.encoder(self.tokens(images))  # (B, T, C): no class token, per-token states
        pooled = torch.einsum("bt,btc->bc", self.pool_weights(states), states)
        return self.head(pooled)

    @torch.no_grad()
    def attention_map(self, images: torch.Tensor) -> torch.Tensor:
        """Where the classification looks, by attention rollout: (B, C, H, W) -> (B, grid, grid), each
        map summing to 1. With a class token, its row of the rollout; with sequence pooling, the
        rollout weighted by the pooling weights."""
        from .model import collect_attention

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


__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "ConvTokenizer", "DigitClassifier", "DigitClassifierConfig",
    "ImageBatches", "PatchEmbedding", "PatchGPT", "PatchGPTConfig", "ResNet", "ResNetConfig", "ResidualBlock",
    "ViTConfig", "VisionTransformer", "accuracy", "attention_rollout", "codes_to_patches", "dequantize",
    "load_cifar10", "normalize", "num_parameters", "patch_codes", "patchify", "predict", "quantize",
    "random_crop_flip", "read_cifar10_batches", "read_image_folder", "unpatchify",
]
