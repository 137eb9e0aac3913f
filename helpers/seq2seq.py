"""The encoder-decoder of "Attention Is All You Need": an :class:`~helpers.model.Encoder` reads the source,
a :class:`~helpers.model.GPT` with cross-attention writes the target, one token at a time.

::

    source ids (B, S) --Encoder--> memory (B, S, C)
    target ids (B, T) --GPT: causal self-attention, cross-attention to the memory--> logits (B, T, V)

Both halves are the course's shared model (pre-LayerNorm, as everywhere in the course; the paper
normalised after each residual addition). :meth:`EncoderDecoder.generate` encodes the source once and
decodes with the key-value cache, the memory's keys and values computed once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .generate import generate
from .model import GPT, Encoder, TransformerConfig, evaluating, transformer_config


@dataclass
class EncoderDecoderConfig:
    src_vocab_size: int = 16
    tgt_vocab_size: int = 16
    src_block_size: int = 32  # the longest source
    tgt_block_size: int = 32  # the longest target, its start token included
    n_layer: int = 2  # in the encoder and in the decoder
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    tie_weights: bool = True  # the decoder's output head shares its token embedding

    def encoder_config(self) -> TransformerConfig:
        return transformer_config(self, vocab_size=self.src_vocab_size, block_size=self.src_block_size,
                                  cls_token=False, n_out=None)

    def decoder_config(self) -> TransformerConfig:
        return transformer_config(self, vocab_size=self.tgt_vocab_size, block_size=self.tgt_block_size,
                                  cross_attention=True)


class EncoderDecoder(nn.Module):
    """Source ids -> encoder states (the memory) -> decoder with cross-attention -> target logits."""

    def __init__(self, cfg: EncoderDecoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg.encoder_config())
        self.decoder = GPT(cfg.decoder_config())

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) ids, src_mask (B, S) True for real tokens -> memory (B, S, C)."""
        return self.encoder(src, padding_mask=src_mask)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S), tgt (B, T) ids (the target shifted right, after its start token) -> logits (B, T, V)."""
        return self.decoder(tgt, memory=self.encode(src, src_mask), memory_mask=src_mask)

    def generate(self, src: torch.Tensor, start: torch.Tensor, max_new_tokens: int, *,
                 src_mask: torch.Tensor | None = None, use_cache: bool = True, **sampling) -> torch.Tensor:
        """Continue ``start`` (B, T0) ids by ``max_new_tokens`` tokens given the source (B, S): (B, T0 + n), on the
        model's device (the inputs are moved there). ``sampling``: temperature (0 = greedy), top_k, top_p,
        generator, as :func:`helpers.generate`."""
        device = next(self.parameters()).device
        src, start = src.to(device), start.to(device)
        src_mask = src_mask.to(device) if src_mask is not None else None
        with evaluating(self):
            memory = self.encode(src, src_mask)
            return generate(self.decoder, start, max_new_tokens, use_cache=use_cache, memory=memory,
                            memory_mask=src_mask, **sampling)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def decoder_only_config(cfg: EncoderDecoderConfig, vocab_size: int | None = None) -> TransformerConfig:
    """A decoder-only GPT of the same width, heads and depth as ``cfg``'s encoder and decoder together
    (2 * n_layer blocks), reading source and target as one sequence: for comparisons at equal size."""
    decoder = cfg.decoder_config()
    return replace(decoder, vocab_size=vocab_size or decoder.vocab_size, n_layer=2 * cfg.n_layer,
                   block_size=cfg.src_block_size + cfg.tgt_block_size, cross_attention=False)
