"""CIFAR-10 for notebook 06: loading (the full set online, the mirror's JPEG subset offline), a
stratified validation split, normalisation, augmentation and mini-batches.

>>> images, labels = load_cifar10("train")      # (N, 3, 32, 32) uint8, (N,) int64
>>> train, val = stratified_split(labels, 1000)  # indices: a validation set held out of the training images
>>> x = normalize(random_crop_flip(images[:64]))  # augmented, normalised floats
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import is_offline
from ..data import (
    DatasetInfo,
    DataUnavailableError,
    FolderDigest,
    OfflineError,
    data_dir,
    mirror_dir,
    register,
    verify_folder,
)
from ..files import atomic_write

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per channel, over the training set
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}

CIFAR10_DATA = register(
    DatasetInfo(
        name="cifar10",
        description="CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train, 10,000 test). Online "
        "through torchvision.datasets.CIFAR10, which verifies its own MD5; offline the mirror's JPEG subset "
        "cifar10-jpg/{train,test}/<class>/NNNN.jpg (1,000 train and 200 test images per class), each split "
        "verified as a whole (helpers.data.folder_sha256). Read by helpers.vision.load_cifar10.",
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        files=(),
        folders=(
            FolderDigest("cifar10-jpg/train", "f82cbaaaf0043dbd97275319e249910956114c23982d6f7f6ce1ebb769e54782", 10_000),
            FolderDigest("cifar10-jpg/test", "8fcf9038768800fc55478427bfd239d7cbbc5a0b8f4cc47e8c17de7b8821887c", 2_000),
        ),
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


def read_image_folder(folder, classes=None, cache: bool = True,
                      digest: FolderDigest | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an ImageFolder layout ``folder/<class>/<name>.{jpg,png}`` of same-sized images ->
    images (N, 3, H, W) uint8 and labels (N,) int64, class i being the i-th of ``classes``
    (default: the sub-folders in sorted order, as ``torchvision.datasets.ImageFolder`` does).

    With ``digest`` the folder's files are first checked against it (:func:`helpers.data.verify_folder`).
    Decoding thousands of small files takes seconds, so the tensors are cached in the data folder,
    keyed by the folder's path (and digest), and reused while its file names and sizes are unchanged.
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
    verified = digest.sha256 if digest is not None else "unverified"
    key = hashlib.sha256("\n".join([str(folder.resolve()), verified, *listing]).encode()).hexdigest()[:16]
    cached = data_dir() / "cache" / f"imagefolder-{folder.name}-{key}.pt"
    if cache and cached.exists():
        saved = torch.load(cached, weights_only=True)
        return saved["images"], saved["labels"]

    if digest is not None:
        verify_folder(folder, digest, "cifar10")
    decoded = [decode_image(read_file(str(path)), mode=ImageReadMode.RGB) for _, path in files]
    sizes = {tuple(img.shape) for img in decoded}
    if len(sizes) != 1:
        raise ValueError(f"the images in {folder} have different sizes {sorted(sizes)}; resize them first")
    images = torch.stack(decoded)  # (N, 3, H, W) uint8
    labels = torch.tensor([label for label, _ in files], dtype=torch.long)
    if cache:
        with atomic_write(cached) as tmp:
            torch.save({"images": images, "labels": labels}, tmp)
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
            return read_image_folder(folder, classes=CIFAR10_CLASSES, digest=CIFAR10_DATA.folder(f"cifar10-jpg/{split}"))
    if is_offline():
        looked = " and ".join(str(p / "cifar10-jpg" / split) for p in places)
        raise OfflineError(
            f"cifar10: no CIFAR-10 offline (looked for {cache / 'cifar-10-batches-py'} and {looked}). Point "
            "TFS_DATA_MIRROR at the course data mirror (it holds cifar10-jpg/), or unset TFS_OFFLINE to "
            "download the full set with torchvision."
        )
    from torchvision.datasets import CIFAR10

    CIFAR10(root=str(cache), train=split == "train", download=True)  # downloads and checks the MD5
    return read_cifar10_batches(cache, split)


def stratified_split(labels: torch.Tensor, n_val: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out a validation set: ``labels`` (N,) -> the indices ``(train, val)``, sorted, disjoint,
    together every index once, with ``len(val) == n_val``.

    Every class gives the validation set its share of ``n_val`` (in proportion to its count, rounded so
    that the shares add up to ``n_val``), drawn at random with ``seed``: the same seed, the same split.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be one class index per image, (N,), not {tuple(labels.shape)}")
    if not 0 < n_val < len(labels):
        raise ValueError(f"n_val={n_val}: the validation set needs between 1 and {len(labels) - 1} of the "
                         f"{len(labels)} images")
    classes, counts = labels.unique(return_counts=True)
    share = counts.double() * n_val / len(labels)  # each class's exact share, then rounded (largest remainders)
    quota = share.floor().long()
    quota[(share - quota).argsort(descending=True, stable=True)[: n_val - int(quota.sum())]] += 1
    generator = torch.Generator().manual_seed(seed)
    val = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        members = (labels == c).nonzero().squeeze(1)
        val.append(members[torch.randperm(len(members), generator=generator)[:q]])
    val = torch.cat(val).sort().values
    in_train = torch.ones(len(labels), dtype=torch.bool)
    in_train[val] = False
    return in_train.nonzero().squeeze(1), val


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
