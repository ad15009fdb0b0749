"""Key/value caches for incremental decoding with vidvlm's own transformer blocks.

A decoder that generates one token at a time would otherwise run its whole sequence again at every step: with
``S`` tokens that is ``O(S^2)`` token passes per sequence. With a cache, each step runs only the new tokens; their
queries attend to the keys and values that earlier steps stored. Causal masks are aligned to the bottom right
(:class:`vidvlm.layers.attention.AttnMask`), so new queries see the whole cache and each other causally.

* :class:`LayerCache`: one attention block's keys and values ``[B, H, S, Dh]``, and the keys and values of its
  cross-attention context ``[B, H, M, Dh]`` (projected once: the context does not change while decoding).
* :class:`KVCache`: a decoder's caches, one per block, the key padding of every cached position and the number of
  positions read so far (the offset of the next position embedding). Beam search calls :meth:`KVCache.reorder`
  when it keeps some beams and drops others.

HF transformers keeps its own cache classes for its models (``DynamicCache``); the LLaVA-style family uses those.
This module is for the blocks of :mod:`vidvlm.layers.transformer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """One block's cached keys and values.

    Attributes:
        k: self-attention keys ``[B, H, S, Dh]`` of the positions read so far (None before the first call).
        v: self-attention values, same shape.
        ctx_k: cross-attention keys of the context ``[B, H, M, Dh]`` (None until the block first reads it).
        ctx_v: cross-attention values, same shape.
    """

    k: Tensor | None = None
    v: Tensor | None = None
    ctx_k: Tensor | None = None
    ctx_v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the new positions' keys and values ``[B, H, N, Dh]``; returns every position's ``[B, H, S + N, Dh]``."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (long ``[B']``, repeats allowed) of every cached tensor."""
        for name in ("k", "v", "ctx_k", "ctx_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index))


@dataclass
class KVCache:
    """A decoder's key/value caches.

    Attributes:
        layers: one :class:`LayerCache` per block, in the order the decoder runs them.
        key_padding: bool ``[B, S]``, True for real keys among the cached positions; None while every key is real.
        length: positions read so far (``S``).
        prefix_len: how many of them are a prefix without position embeddings (the prefix-LM's visual tokens), so
            that the next text position is ``length - prefix_len``.
        context_padding: bool ``[B, M]``, True for real context keys of cross-attention (None: all real).
    """

    layers: list[LayerCache] = field(default_factory=list)
    key_padding: Tensor | None = None
    length: int = 0
    prefix_len: int = 0
    context_padding: Tensor | None = None

    @classmethod
    def empty(cls, num_layers: int) -> KVCache:
        """A cache for a decoder of ``num_layers`` blocks, before its first call."""
        return cls(layers=[LayerCache() for _ in range(num_layers)])

    def extend_padding(self, new: Tensor | None, batch: int, n: int, device: torch.device) -> Tensor | None:
        """Record the key padding of ``n`` new positions (bool ``[B, n]``, None = all real) and return the padding of
        every position ``[B, S + n]``, or None while all are real. Also advances :attr:`length` by ``n``."""
        if new is not None or self.key_padding is not None:
            old = self.key_padding
            if old is None:
                old = torch.ones(batch, self.length, dtype=torch.bool, device=device)
            if new is None:
                new = torch.ones(batch, n, dtype=torch.bool, device=device)
            self.key_padding = torch.cat([old, new], dim=1)
        self.length += n
        return self.key_padding

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (long ``[B']``) of every layer and of the key padding: beam search's surviving beams."""
        for layer in self.layers:
            layer.reorder(index)
        if self.key_padding is not None:
            self.key_padding = self.key_padding.index_select(0, index)
        if self.context_padding is not None:
            self.context_padding = self.context_padding.index_select(0, index)


__all__ = ["LayerCache", "KVCache"]
