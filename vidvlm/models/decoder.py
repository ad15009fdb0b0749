"""Text decoders of the generative family, one class per architecture.

* :class:`CrossAttentionDecoder` (CoCa): unimodal causal text blocks with a class token, then multimodal blocks
  that cross-attend to the visual tokens.
* :class:`PrefixDecoder` (prefix-LM): the visual tokens are a bidirectional prefix of one causal stack.
* :class:`CausalDecoder` (early fusion): one causal stack over a single sequence of ids, in which visual tokens are
  ids of the decoder's own vocabulary (``vidvlm.models.early_fusion``).

The first two take ``ids [B, L]`` and visual tokens ``[B, M, D]``; all three return next-token logits ``[B, L, V]``.

Incremental decoding: each decoder's ``new_cache()`` makes a :class:`~vidvlm.layers.kv_cache.KVCache`; passed as
``cache=``, the first call reads the prompt (and the visual tokens) and fills it, and later calls take only the new
ids and return their logits, equal to those of the whole sequence run again (``tests/models/test_kv_cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidvlm.layers.attention import AttnMask
from vidvlm.layers.kv_cache import KVCache
from vidvlm.layers.transformer import TransformerBlock


@dataclass
class DecoderConfig:
    """Text decoder.

    Attributes:
        width: token width D (the connector maps visual tokens to it).
        num_heads: attention heads.
        text_depth: CoCa unimodal (causal, text-only) blocks; unused by ``prefix_lm``.
        depth: multimodal blocks (CoCa, with cross-attention) or prefix-LM blocks.
        mlp_ratio: MLP width / D.
        max_len: most text tokens (BOS, question, answer, EOS) a sequence may hold.
        vocab_size: filled from the tokenizer when it is trained (``prepare_for_training``).
        visual_positions: learned position embeddings added to the visual tokens by their index (for the grid
            poolers: time step, then cell), for at most this many tokens; 0: none. Cross-attention (coca) and the
            prefix (prefix-LM) otherwise read the tokens as a set, and can tell time steps apart only by what the
            tower wrote into each token (BENCHMARKS.md, "Where is the motion?"). Unused by ``CausalDecoder``,
            whose visual ids sit in its own positions.
    """

    width: int = 256
    num_heads: int = 4
    text_depth: int = 2
    depth: int = 2
    mlp_ratio: float = 4.0
    max_len: int = 32
    vocab_size: int = 0
    visual_positions: int = 0


class TextDecoder(nn.Module):
    """What every text decoder has: token + position embeddings, a final norm and an LM head.

    Subclasses add their blocks and implement ``forward(ids, ...) -> logits``: ``forward(ids, visual, lengths=None,
    visual_mask=None)`` where visual tokens come as vectors, ``forward(ids, key_padding=None)`` where they are ids.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_len + 1, cfg.width) * 0.02)
        if cfg.visual_positions:
            self.visual_pos_embed = nn.Parameter(torch.randn(cfg.visual_positions, cfg.width) * 0.02)

    def _head(self) -> None:
        # built after the subclass's blocks, so parameter order (and seeded initial weights) stays as it was
        self.norm = nn.LayerNorm(self.cfg.width, eps=1e-6)
        self.head = nn.Linear(self.cfg.width, self.cfg.vocab_size)

    def embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``ids [B, L] -> [B, L, D]`` with the positions ``start .. start + L - 1``."""
        n = start + ids.shape[1]
        if n > self.pos_embed.shape[0]:
            raise ValueError(f"decoder: {n} positions, more than the {self.pos_embed.shape[0]} it has embeddings for")
        return self.token_embed(ids) + self.pos_embed[start:n]

    def place_visual(self, visual: torch.Tensor) -> torch.Tensor:
        """``visual [B, M, D]`` with its position embeddings added (``cfg.visual_positions``; as is without)."""
        if not self.cfg.visual_positions:
            return visual
        m = visual.shape[1]
        if m > self.cfg.visual_positions:
            raise ValueError(
                f"decoder: {m} visual tokens, more than decoder.visual_positions ({self.cfg.visual_positions})"
            )
        return visual + self.visual_pos_embed[:m]

    def new_cache(self) -> KVCache:
        """An empty key/value cache for incremental decoding with this decoder (see the module docstring)."""
        return KVCache.empty(sum(1 for m in self.modules() if isinstance(m, TransformerBlock)))


class CrossAttentionDecoder(TextDecoder):
    """CoCa's decoder: unimodal causal text blocks with a class token appended (its output is the text embedding),
    then multimodal causal blocks that cross-attend to the visual tokens."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__(cfg)
        d = cfg.width
        self.cls_token = nn.Parameter(torch.randn(d) * 0.02)
        self.text_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.text_depth)
        )
        self.cls_norm = nn.LayerNorm(d, eps=1e-6)
        self.mm_blocks = nn.ModuleList(
            TransformerBlock(d, cfg.num_heads, cfg.mlp_ratio, cross_attention=True) for _ in range(cfg.depth)
        )
        self._head()

    def text_features(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal pass: ``ids [B, L]`` (right padded, ``lengths [B]``) -> text tokens ``[B, L, D]`` and the
        class-token embedding ``[B, D]``. The class token sits after the padding; padded keys are hidden."""
        b, n = ids.shape
        x = torch.cat([self.embed(ids), (self.cls_token + self.pos_embed[n]).expand(b, 1, -1)], dim=1)
        real = torch.arange(n + 1, device=ids.device)[None] < lengths[:, None]
        real[:, n] = True
        mask = AttnMask(causal=True, key_padding=real)
        for blk in self.text_blocks:
            x = blk(x, mask)
        return x[:, :n], self.cls_norm(x[:, n])

    def forward(
        self,
        ids: torch.Tensor,
        visual: torch.Tensor,
        lengths: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            ids: long ``[B, L]`` text (right padded; padding after the real tokens never reaches them causally).
            visual: ``[B, M, D]`` visual tokens, the cross-attention context (None once ``cache`` holds it).
            lengths: real tokens per row (the class token's position; default: all real). Unused with a cache.
            visual_mask: bool ``[B, M]``, True for real visual tokens; None = all real.
            cache: from :meth:`new_cache`; ``ids`` are then the tokens after the cached ones. The class token
                is left out: no text token reads it (it sits after them, behind the causal mask).

        Returns:
            ``[B, L, V]`` logits for the token after each text position.
        """
        if cache is not None:
            return self._forward_cached(ids, visual, visual_mask, cache)
        if lengths is None:
            lengths = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        x, _ = self.text_features(ids, lengths)
        visual = self.place_visual(visual)
        ctx_mask = None if visual_mask is None else AttnMask(key_padding=visual_mask)
        for blk in self.mm_blocks:
            x = blk(x, AttnMask(causal=True), context=visual, context_mask=ctx_mask)
        return self.head(self.norm(x))

    def _forward_cached(
        self, ids: torch.Tensor, visual: torch.Tensor | None, visual_mask: torch.Tensor | None, cache: KVCache
    ) -> torch.Tensor:
        x = self.embed(ids, cache.length)
        cache.length += ids.shape[1]
        causal = AttnMask(causal=True)
        layers = iter(cache.layers)
        for blk in self.text_blocks:
            x = blk(x, causal, cache=next(layers))
        if visual is not None:  # the first call: the context is projected into the cache once
            visual = self.place_visual(visual)
        if visual_mask is not None:
            cache.context_padding = visual_mask
        ctx_mask = None if cache.context_padding is None else AttnMask(key_padding=cache.context_padding)
        for blk in self.mm_blocks:
            x = blk(x, causal, context=visual, context_mask=ctx_mask, cache=next(layers))
        return self.head(self.norm(x))


class PrefixDecoder(TextDecoder):
    """Prefix-LM decoder: one stack of blocks over ``[visual tokens; text]``, the visual prefix attending
    bidirectionally and the text causally (``AttnMask(prefix_len=M)``)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__(cfg)
        self.prefix_embed = nn.Parameter(torch.zeros(cfg.width))  # marks visual tokens as such
        self.mm_blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self._head()

    def hidden(self, x: torch.Tensor, mask: AttnMask, cache: KVCache | None = None) -> torch.Tensor:
        """Run the blocks on embedded tokens ``[B, S, D]`` (with a cache: the positions after the cached ones)."""
        layers = [None] * len(self.mm_blocks) if cache is None else cache.layers
        for blk, layer in zip(self.mm_blocks, layers, strict=True):
            x = blk(x, mask, cache=layer)
        return x

    def forward(
        self,
        ids: torch.Tensor,
        visual: torch.Tensor,
        lengths: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Next-token logits ``[B, L, V]`` of ``ids [B, L]`` after the visual prefix ``[B, M, D]`` (mask
        ``[B, M]``); ``lengths`` is unused (right padding never reaches real tokens causally). With a ``cache``
        (:meth:`new_cache`), the first call reads the prefix and ``ids`` and later calls only new ids (``visual``
        None)."""
        if cache is not None and cache.length > 0:
            x = self.embed(ids, cache.length - cache.prefix_len)
            keys = cache.extend_padding(None, ids.shape[0], ids.shape[1], ids.device)
            return self.head(self.norm(self.hidden(x, AttnMask(causal=True, key_padding=keys), cache)))
        m = visual.shape[1]
        x = torch.cat([self.place_visual(visual) + self.prefix_embed, self.embed(ids)], dim=1)
        keys = None
        if visual_mask is not None:
            keys = torch.cat([visual_mask, visual_mask.new_ones(ids.shape)], dim=1)
        if cache is not None:
            cache.prefix_len = m
            cache.extend_padding(keys, x.shape[0], x.shape[1], x.device)
        x = self.hidden(x, AttnMask(prefix_len=m, key_padding=keys), cache)[:, m:]
        return self.head(self.norm(x))


class CausalDecoder(TextDecoder):
    """One causal stack over a sequence of ids (Chameleon-style early fusion: image and text tokens share the
    vocabulary, the embeddings and every block)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        if cfg.visual_positions:
            raise ValueError("decoder.visual_positions: the early-fusion decoder reads visual ids in its own positions")
        super().__init__(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self._head()

    def forward(
        self, ids: torch.Tensor, key_padding: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> torch.Tensor:
        """``ids [B, S]`` (``key_padding`` bool ``[B, S]``, True for real tokens; None = all real, and right padding
        needs none: no real token attends to a later one) -> next-token logits ``[B, S, V]``. With a ``cache``
        (:meth:`new_cache`), ``ids`` and ``key_padding`` are the positions after the cached ones."""
        if cache is None:
            x, layers = self.embed(ids), [None] * len(self.blocks)
        else:
            x, layers = self.embed(ids, cache.length), cache.layers
            key_padding = cache.extend_padding(key_padding, ids.shape[0], ids.shape[1], ids.device)
        mask = AttnMask(causal=True, key_padding=key_padding)
        for blk, layer in zip(self.blocks, layers, strict=True):
            x = blk(x, mask, cache=layer)
        return self.head(self.norm(x))


__all__ = ["DecoderConfig", "TextDecoder", "CrossAttentionDecoder", "PrefixDecoder", "CausalDecoder"]
