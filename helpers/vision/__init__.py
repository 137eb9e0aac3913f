"""Vision: images as sequences of patches, for generating MNIST digits (notebook 05) and
classifying CIFAR-10 (notebook 06).

An image ``(C, H, W)`` cut into ``p x p`` patches is a sequence of ``(H/p) * (W/p)`` vectors of
``C * p * p`` pixels, ready for the shared transformer::

    image (1, 28, 28) --patchify(4)--> patches (49, 16) --GPT--> the next patch, one at a time
    image (3, 32, 32) --tokenizer----> tokens (64, C)   --Encoder--> class logits

One module per concern, every public name re-exported here (``from helpers import vision as V``):

* :mod:`~helpers.vision.patches` (05, 06): :func:`patchify`, :func:`unpatchify`, :func:`quantize`,
  :func:`dequantize`, :func:`patch_codes`, :func:`codes_to_patches` (a quantized patch as one token);
* :mod:`~helpers.vision.generation` (05): :class:`PatchGPT`, an autoregressive GPT over patches, and
  :class:`DigitClassifier`, the small CNN that judges generated digits;
* :mod:`~helpers.vision.cifar` (06): :func:`load_cifar10`, :func:`normalize`, :func:`random_crop_flip`,
  :class:`ImageBatches`;
* :mod:`~helpers.vision.classification` (06, and 05's judge): :class:`VisionTransformer`, :class:`ResNet`,
  :func:`predict`, :func:`accuracy`, :func:`attention_rollout`.
* :mod:`~helpers.vision.diffusion` (12, imported as a module: ``from helpers.vision import diffusion as D``):
  noise schedules, :func:`~helpers.vision.diffusion.q_sample`, DDPM and DDIM steps, classifier-free guidance,
  the :class:`~helpers.vision.diffusion.DiT`, an EMA of weights, the Fréchet distance.

Checkpoints written when all of this was one module name ``helpers.vision:PatchGPT`` and the like;
those names resolve here too.
"""

from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_DATA,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ImageBatches,
    load_cifar10,
    normalize,
    random_crop_flip,
    read_cifar10_batches,
    read_image_folder,
)
from .classification import (
    ConvTokenizer,
    PatchEmbedding,
    ResidualBlock,
    ResNet,
    ResNetConfig,
    VisionTransformer,
    ViTConfig,
    accuracy,
    attention_rollout,
    num_parameters,
    predict,
)
from .generation import DigitClassifier, DigitClassifierConfig, PatchGPT, PatchGPTConfig
from .patches import codes_to_patches, dequantize, patch_codes, patchify, quantize, unpatchify

__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_DATA", "CIFAR10_MEAN", "CIFAR10_STD", "ConvTokenizer", "DigitClassifier",
    "DigitClassifierConfig", "ImageBatches", "PatchEmbedding", "PatchGPT", "PatchGPTConfig", "ResNet", "ResNetConfig",
    "ResidualBlock", "ViTConfig", "VisionTransformer", "accuracy", "attention_rollout", "codes_to_patches",
    "dequantize", "load_cifar10", "normalize", "num_parameters", "patch_codes", "patchify", "predict", "quantize",
    "random_crop_flip", "read_cifar10_batches", "read_image_folder", "unpatchify",
]
