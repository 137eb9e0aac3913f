"""helpers: the code the course's notebooks share.

Ground: :mod:`config` (profiles, device, seeds), :mod:`data` (registry, cache, mirror, loaders),
:mod:`plotting`. Core: :mod:`attention`, :mod:`model`, then what works on a model:
:mod:`generate`, :mod:`train`, :mod:`checkpoint`, :mod:`pretrained`. Topic modules, one per
notebook topic, build on these.
"""

from .attention import KVCache, MultiHeadAttention, causal_mask, einsum_attention, padding_mask
from .checkpoint import load_checkpoint, save_checkpoint
from .config import get_device, get_profile, in_colab, is_offline, pick, seed_everything, summary
from .data import data_dir, load_mnist, load_tiny_shakespeare
from .generate import generate
from .model import GPT, Block, Encoder, TransformerConfig, collect_attention, mean_pool
from .train import History, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "GPT", "Block", "Encoder", "History", "KVCache", "MultiHeadAttention", "TransformerConfig",
    "causal_mask", "collect_attention", "data_dir", "einsum_attention", "evaluate", "fit", "generate",
    "get_device", "get_profile", "in_colab", "is_offline", "load_checkpoint", "load_mnist",
    "load_tiny_shakespeare", "mean_pool", "padding_mask", "pick", "save_checkpoint", "seed_everything",
    "summary",
]
