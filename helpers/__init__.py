"""helpers: the code the course's notebooks share, in four layers (imports only point down).

* ground: :mod:`distributed` (torchrun), :mod:`config` (profiles, device, seeds), :mod:`files` (atomic
  writes), :mod:`data` (registry, cache, mirror, loaders), :mod:`recipes` (every notebook's
  hyper-parameters), :mod:`plotting`;
* core: :mod:`attention`, :mod:`layers` (norms, MLP, adaLN), :mod:`model`, then what works on a model:
  :mod:`generate`, :mod:`train`, :mod:`checkpoint`, :mod:`gguf`, :mod:`pretrained` and :mod:`gemma` (weights from elsewhere);
* topics, one per notebook topic: :mod:`text`, :mod:`arithmetic`, :mod:`vision`, :mod:`audio`,
  :mod:`music`, :mod:`rag`;
* entry points: :mod:`train_cli` (and the scripts in ``benchmarks/``).
"""

from .attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    einsum_attention,
    padding_mask,
    sliding_window_causal_mask,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .config import (
                     autocast_dtype,
                     get_device,
                     get_profile,
                     grad_scaler,
                     in_colab,
                     is_offline,
                     make_generator,
                     mixed_precision,
                     pick,
                     seed_everything,
                     summary,
)
from .data import data_dir, load_mnist, load_tiny_shakespeare
from .generate import generate
from .model import GPT, Block, Encoder, TransformerConfig, collect_attention, evaluating, mean_pool
from .train import History, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "GPT", "Block", "Encoder", "History", "KVCache", "MultiHeadAttention", "TransformerConfig",
    "autocast_dtype", "causal_mask", "collect_attention", "data_dir", "einsum_attention", "evaluate", "evaluating",
    "fit", "generate", "get_device", "get_profile", "grad_scaler", "in_colab", "is_offline", "load_checkpoint",
    "load_mnist", "load_tiny_shakespeare", "make_generator", "mean_pool", "mixed_precision", "padding_mask", "pick",
    "save_checkpoint", "seed_everything", "sliding_window_causal_mask", "summary",
]
