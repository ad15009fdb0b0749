"""Early-fusion family (Chameleon-style) over video: discrete visual tokens in the language model's own vocabulary.

A clip becomes ids before the language model sees it. The video front-end (tower -> pooler -> connector) gives
``M`` vectors of ``len(levels)`` channels per clip; finite scalar quantisation (:class:`~vidvlm.layers.quantize.FSQ`)
rounds each to one of ``K = prod(levels)`` codes. One causal decoder (:class:`~vidvlm.models.decoder.CausalDecoder`)
reads the single sequence

    BOV v_1 ... v_M EOV  prompt answer EOS        (v_i = text vocabulary + code index)

with one embedding table and one output head over text and visual ids, and is trained on next-token prediction over
both: the visual tokens (``visual_loss``) and the answer or caption (``caption_loss``). Captioning is that model
continuing after EOV, its output restricted to text ids. With ``text_first`` a share of the captions comes first,
``prompt caption EOS BOV v_1 ... v_M EOV``, and the same model writes clips from captions (:meth:`generate_video`:
visual ids, then the pixel decoder).

The codes are learnt as a tokenizer's are: a pixel decoder (:class:`PixelDecoder`) rebuilds the clip's frames at a
small size from the codes alone (``recon_loss``, gradients straight through the rounding), so the codes keep what the
pixels hold. The language model's losses do not reach the front-end (ids carry no gradient). Chameleon trains its
image tokenizer first and then freezes it; a recipe does the same with two stages (``front_end.*`` and
``pixel_decoder.*`` trainable, then ``decoder.*``), or trains all three at once.

Module-name prefixes for training stages: ``front_end.tower.``, ``front_end.pooler.``, ``front_end.connector.``,
``pixel_decoder.``, ``decoder.``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vidvlm.devices import to_device
from vidvlm.errors import ConfigError
from vidvlm.layers.connectors import ConnectorConfig
from vidvlm.layers.kv_cache import KVCache
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.layers.quantize import FSQ
from vidvlm.models.base import ANSWER, FRONT_END, GENERATE, VISUAL_TOKENS
from vidvlm.models.decoder import CausalDecoder, DecoderConfig
from vidvlm.models.decoding import Cached, DecodeConfig, generate
from vidvlm.models.frontend import FrontEndConfig, FrontEndOutput, TowerConfig, VideoFrontEnd
from vidvlm.models.generative import TextGenerator, TextGeneratorConfig
from vidvlm.models.prompting import IGNORE, lm_loss
from vidvlm.models.registry import register_family
from vidvlm.models.tokenizer import TextTokenizer
from vidvlm.models.vision import VisionConfig


@dataclass
class PixelDecoderConfig:
    """The tokenizer's decoder: a clip's codes -> its frames at ``size x size`` pixels.

    Attributes:
        size: side of the rebuilt frames (the input frames are resized to it, by area, as the target).
        hidden: width of the MLP's hidden layer.
        loss: the reconstruction error per pixel, ``l2`` (squared) or ``l1`` (absolute). On scenes of small shapes
            on a plain background ``l1`` is a trap: the background alone is its optimum for every pixel a code does
            not pin down, and the tokenizer settled there and lost even colour (BENCHMARKS.md, *Early fusion*).
    """

    size: int = 32
    hidden: int = 512
    loss: Literal["l2", "l1"] = "l2"

    def __post_init__(self) -> None:
        if self.size < 1 or self.hidden < 1:
            raise ConfigError(f"pixels: size and hidden must be >= 1, got {self.size} and {self.hidden}")
        if self.loss not in ("l2", "l1"):
            raise ConfigError(f"pixels.loss: 'l2' or 'l1', got {self.loss!r}")


@dataclass
class EarlyFusionConfig(TextGeneratorConfig):
    """An early-fusion model (:class:`TextGeneratorConfig`): video front-end + quantiser + one causal decoder over
    text and visual ids.

    Attributes:
        family: ``early_fusion``.
        front_end: the tokenizer's encoder (tower, pooler, connector; the connector maps to ``len(levels)``).
        levels: FSQ values per channel; ``prod(levels)`` visual ids are added to the decoder's vocabulary.
        decoder: the causal decoder (``vocab_size``: text ids the tokenizer may use; ``max_len``: most text tokens).
        max_visual_tokens: most visual tokens a clip may give (sizes the position table: a clip of
            ``front_end.num_frames`` frames must fit).
        pixels: the pixel decoder that trains the codes (:class:`PixelDecoderConfig`).
        visual_weight: weight of the next-visual-token loss (Chameleon: the same as text's).
        recon_weight: weight of the pixel reconstruction loss.
        text_first: the share of caption samples laid out ``prompt caption EOS BOV visual EOV`` instead (drawn per
            sample): the decoder then also learns to write a clip's visual tokens from its caption, which
            :meth:`EarlyFusion.generate_video` does (0: the captioning order only).
    """

    family: Literal["early_fusion"] = "early_fusion"
    front_end: FrontEndConfig = field(
        default_factory=lambda: FrontEndConfig(
            tower=TowerConfig(vision=VisionConfig(image_size=32, patch_size=4, width=96, depth=3, num_heads=6)),
            pooler=PoolerConfig("spatial2d", {"size": 4, "num_prefix_tokens": 1}),
            connector=ConnectorConfig(name="mlp"),
            num_frames=8,
            image_size=32,
        )
    )
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(width=128, depth=4, max_len=24, vocab_size=64))
    levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    max_visual_tokens: int = 256
    pixels: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    visual_weight: float = 1.0
    recon_weight: float = 1.0
    text_first: float = 0.0

    def __post_init__(self) -> None:
        if self.front_end.connector.name == "none":
            raise ConfigError("front_end.connector: the quantiser needs a connector to len(levels) channels")
        if self.max_visual_tokens < 1:
            raise ConfigError(f"max_visual_tokens: must be >= 1, got {self.max_visual_tokens}")
        if self.decoder.vocab_size < 8:
            raise ConfigError(f"decoder.vocab_size: must be >= 8, got {self.decoder.vocab_size}")
        if not 0.0 <= self.text_first <= 1.0:
            raise ConfigError(f"text_first: a share in [0, 1], got {self.text_first}")

    @classmethod
    def tiny(cls, **overrides: Any) -> EarlyFusionConfig:
        """A minute model for tests."""
        vision = VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_tubelets=4)
        base: dict[str, Any] = dict(
            front_end=FrontEndConfig(
                tower=TowerConfig(vision=vision),
                pooler=PoolerConfig("spatial2d", {"size": 2, "num_prefix_tokens": 1}),
                connector=ConnectorConfig(name="mlp"),
                num_frames=4,
            ),
            levels=[5, 5, 3],
            decoder=DecoderConfig(width=32, num_heads=2, depth=1, max_len=24, vocab_size=64),
            max_visual_tokens=32,
            pixels=PixelDecoderConfig(size=8, hidden=32),
        )
        base.update(overrides)
        return cls(**base)


class PixelDecoder(nn.Module):
    """Codes ``[B, M, d]`` -> frames ``[B, T, 3, s, s]``: an MLP over the whole clip's codes, in which every output
    pixel has its own weights over every code position. A code's place in the sequence is where the pooler put its
    token (the same layout for every clip), so the decoder needs no geometry and serves any pooler. Learnt queries
    cross-attending to the codes (tried first) stayed at the mean image for hundreds of steps: BENCHMARKS.md.

    Args:
        cfg: sizes (:class:`PixelDecoderConfig`).
        code_dim: channels per code.
        num_frames: most frames a clip has.
        max_tokens: most codes a clip has.
    """

    def __init__(self, cfg: PixelDecoderConfig, code_dim: int, num_frames: int, max_tokens: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_frames = num_frames
        self.max_tokens = max_tokens
        # each position reads its code and whether it is there (a padded frame's, or past a short clip's end)
        self.net = nn.Sequential(
            nn.Linear(max_tokens * (code_dim + 1), cfg.hidden),
            nn.GELU(),
            nn.Linear(cfg.hidden, num_frames * 3 * cfg.size**2),
        )

    def forward(self, codes: torch.Tensor, mask: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        """``codes [B, M, d]`` (``mask`` bool ``[B, M]``, True for real codes; None = all real) -> frames
        ``[B, T, 3, s, s]`` with ``T = num_frames``."""
        if num_frames > self.num_frames:
            raise ConfigError(f"front_end.num_frames: the pixel decoder rebuilds {self.num_frames}, got {num_frames}")
        present = codes.new_ones(codes.shape[:2]) if mask is None else mask.to(codes.dtype)
        x = torch.cat([codes * present[..., None], present[..., None]], dim=-1)
        x = F.pad(x, (0, 0, 0, self.max_tokens - codes.shape[1]))
        pixels = self.net(rearrange(x, "b m c -> b (m c)"))
        frames = rearrange(pixels, "b (t c h w) -> b t c h w", t=self.num_frames, c=3, h=self.cfg.size)
        return frames[:, :num_frames]

    def target(self, video: torch.Tensor) -> torch.Tensor:
        """``video [B, T, 3, H, W]`` -> ``[B, T, 3, s, s]``, resized by area."""
        b = video.shape[0]
        small = F.interpolate(rearrange(video, "b t c h w -> (b t) c h w").float(), size=self.cfg.size, mode="area")
        return rearrange(small, "(b t) c h w -> b t c h w", b=b)


@register_family("early_fusion")
class EarlyFusion(TextGenerator):
    """Chameleon-style early fusion over video (see the module docstring)."""

    config_class = EarlyFusionConfig
    abilities = frozenset({GENERATE, ANSWER, VISUAL_TOKENS, FRONT_END})

    def __init__(self, config: EarlyFusionConfig, tokenizer: TextTokenizer | None = None) -> None:
        super().__init__(config)
        self.front_end = VideoFrontEnd(config.front_end, len(config.levels))
        if config.front_end.tower.name == "native":  # as the generative family: frames told apart from the start
            nn.init.normal_(self.front_end.base_tower.pos_embed.temporal, std=0.02)
        self.quantizer = FSQ(config.levels)
        text = config.decoder.vocab_size
        self.visual_offset = text  # visual id = text vocabulary + code index
        self.bov_id = text + self.quantizer.codebook_size
        self.eov_id = self.bov_id + 1
        self.decoder = CausalDecoder(
            dataclasses.replace(
                config.decoder,
                vocab_size=self.eov_id + 1,
                max_len=config.max_visual_tokens + 2 + config.decoder.max_len,
            )
        )
        self.pixel_decoder = PixelDecoder(
            config.pixels, self.quantizer.dim, config.front_end.num_frames, config.max_visual_tokens
        )
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    # -- the visual tokenizer ----------------------------------------------------------------------------------
    def quantize(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, FrontEndOutput]:
        """``video [B, T, 3, H, W]`` -> codes ``[B, M, d]`` (straight-through), code indices long ``[B, M]`` in
        ``[0, prod(levels))`` and the front-end's output (its ``mask [B, M]`` marks the tokens of real frames)."""
        out = self.front_end(video, frame_mask)
        if out.tokens.shape[1] > self.config.max_visual_tokens:
            raise ConfigError(
                f"max_visual_tokens: the front-end gives {out.tokens.shape[1]} tokens a clip, more than "
                f"{self.config.max_visual_tokens}"
            )
        codes, indices = self.quantizer(out.tokens)
        return codes, indices, out

    def visual_sequence(self, indices: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Code indices ``[B, M]`` -> the decoder's visual segment ``BOV v_1 ... v_M EOV`` long ``[B, M + 2]`` (a
        padded frame's tokens become BOV: hidden from attention and never a target)."""
        ids = indices + self.visual_offset
        if mask is not None:
            ids = ids.masked_fill(~mask, self.bov_id)
        b = ids.shape[0]
        return torch.cat([ids.new_full((b, 1), self.bov_id), ids, ids.new_full((b, 1), self.eov_id)], dim=1)

    def reconstruct(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``video [B, T, 3, H, W]`` (after :attr:`transform`) -> the frames rebuilt from the codes alone,
        ``[B, T, 3, s, s]`` in the same normalised space."""
        codes, _, out = self.quantize(video, frame_mask)
        return self.pixel_decoder(codes, out.mask, video.shape[1])

    def visual_tokens(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``video [B, T, 3, H, W]`` -> the decoder's embeddings of the clip's visual ids ``[B, M, D]`` (what its
        first block reads, before positions) and their mask ``[B, M]`` or None."""
        _, indices, out = self.quantize(video, frame_mask)
        return self.decoder.token_embed(indices + self.visual_offset), out.mask

    @staticmethod
    def _keys(mask: torch.Tensor | None, text_len: int) -> torch.Tensor | None:
        """Key padding of ``BOV visual EOV text`` from the visual mask ``[B, M]`` (None: every key is real)."""
        if mask is None:
            return None
        b = mask.shape[0]
        return torch.cat([mask.new_ones(b, 1), mask, mask.new_ones(b, 1 + text_len)], dim=1)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Losses on a collated batch.

        Args:
            batch: ``video [B, T, 3, H, W]``, ``frame_mask [B, T]`` (optional), ``text`` (B captions, or answers when
                ``question`` is given), ``question`` (optional, B strings), ``conversation`` (optional, B lists of
                turns or None: a sample with one trains on each of its question-answer turns instead of its caption,
                and its visual ids count once).

        Returns:
            ``{"caption_loss", "visual_loss", "recon_loss"}``, each already weighted.
        """
        video = batch["video"]
        frame_mask = batch.get("frame_mask")
        texts, questions, clip_of = self._text_rows(batch)
        self._note_questions(questions)
        codes, indices, out = self.quantize(video, frame_mask)
        dev = video.device
        clip_mask = out.mask
        if clip_of is not None:  # one row per question: each clip's ids are read by all its rows, predicted by one
            first_row = torch.cat([torch.ones(1, dtype=torch.bool), clip_of[1:] != clip_of[:-1]])
            rows = to_device(clip_of, dev)
            indices, clip_mask = indices[rows], None if clip_mask is None else clip_mask[rows]
        visual = self.visual_sequence(indices, clip_mask)  # [R, M + 2]
        text, text_targets, lengths = self.build_targets(texts, questions)
        b, m, n = visual.shape[0], visual.shape[1], text.shape[1]
        text, text_targets = to_device(text, dev), to_device(text_targets, dev)
        vmask = clip_mask if clip_mask is not None else torch.ones(b, m - 2, dtype=torch.bool, device=dev)
        vreal = torch.cat([vmask.new_ones(b, 1), vmask, vmask.new_ones(b, 1)], dim=1)  # [R, M + 2]
        # position j predicts token j + 1: BOV ... v_M predict v_1 ... EOV; EOV's prediction (the prompt) is not
        # trained, nor, text first, the caption's EOS -> BOV step (generation writes BOV itself)
        vtargets = torch.cat([visual[:, 1:].masked_fill(~vreal[:, 1:], IGNORE), visual.new_full((b, 1), IGNORE)], 1)
        if clip_of is not None:
            vtargets = vtargets.masked_fill(~to_device(first_row, dev)[:, None], IGNORE)
        treal = to_device(torch.arange(n)[None] < lengths[:, None], dev)  # [B, L]
        # clip first: [visual; text]; text first: [text; visual] (the same length, one tensor for both)
        ids = torch.cat([visual, text], dim=1)
        keys = torch.cat([vreal, torch.ones_like(treal)], dim=1)  # right padding needs no mask, causally
        targets = torch.cat([vtargets, text_targets], dim=1)
        is_visual = torch.cat([torch.ones_like(vreal), torch.zeros_like(treal)], dim=1)
        first = self._text_first_rows(b, questions)
        if first is not None:
            row = to_device(first, dev)[:, None]
            ids = torch.where(row, torch.cat([text, visual], dim=1), ids)
            keys = torch.where(row, torch.cat([treal, vreal], dim=1), keys)
            targets = torch.where(row, torch.cat([text_targets, vtargets], dim=1), targets)
            is_visual = torch.where(row, torch.cat([torch.zeros_like(treal), torch.ones_like(vreal)], 1), is_visual)
        logits = self.decoder(ids, None if bool(first is None and clip_mask is None) else keys)
        rebuilt = self.pixel_decoder(codes, out.mask, video.shape[1])
        diff = rebuilt - self.pixel_decoder.target(video)
        error = (diff.abs() if self.pixel_decoder.cfg.loss == "l1" else diff.pow(2)).mean(dim=(2, 3, 4))  # [B, T]
        if frame_mask is None:
            recon = error.mean()
        else:
            weight = to_device(frame_mask, video.device).to(error.dtype)
            recon = (error * weight).sum() / weight.sum()
        cfg = self.config
        return {
            "caption_loss": cfg.caption_weight * lm_loss(logits, targets.masked_fill(is_visual, IGNORE)),
            "visual_loss": cfg.visual_weight * lm_loss(logits, targets.masked_fill(~is_visual, IGNORE)),
            "recon_loss": cfg.recon_weight * recon,
        }

    def _text_first_rows(self, b: int, questions: Sequence[str | None] | None) -> torch.Tensor | None:
        """Bool ``[B]`` on the host, the training rows laid out caption first (drawn with ``text_first``; never a
        question's row, nor in evaluation), or None for none."""
        if not self.training or self.config.text_first <= 0:
            return None
        rows = torch.rand(b) < self.config.text_first
        if questions is not None:
            rows &= torch.tensor([q is None for q in questions])
        return rows

    # -- generation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        video: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        questions: Sequence[str | None] | None = None,
        decode: DecodeConfig | None = None,
        clip_of: torch.Tensor | None = None,
    ) -> list[str]:
        """Caption (or answer a question about) each clip: the decoder continues ``BOV visual EOV prompt`` with
        text ids only.

        Args:
            video: ``[N, T, 3, H, W]`` after :attr:`transform`.
            frame_mask: bool ``[N, T]`` (None = all real).
            questions: B questions (None, or None entries, for captions).
            decode: decoding options (default: ``config.decode``).
            clip_of: long ``[B]``, the clip each output is about (each clip is encoded once); None: one per clip.

        Returns:
            B strings.
        """
        cfg = decode or self.config.decode
        self._check_can_answer(questions)
        _, indices, out = self.quantize(video, frame_mask)
        mask = out.mask
        if clip_of is not None:
            indices, mask = indices[clip_of], None if mask is None else mask[clip_of]
        visual = self.visual_sequence(indices, mask)
        layout = self.layout
        prompts, cfg = self._prompts(layout, questions, visual.shape[0], cfg)
        text_ids = self.visual_offset  # captions are text: visual ids are never sampled here

        def recompute(tokens: torch.Tensor, rows: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
            keys = self._keys(None if mask is None else mask[rows], tokens.shape[1])
            return self.decoder(torch.cat([visual[rows], tokens], dim=1), keys, cache)[:, -1, :text_ids]

        def then(last: torch.Tensor, cache: KVCache) -> torch.Tensor:
            return self.decoder(last, None, cache)[:, -1, :text_ids]

        step = Cached(self.decoder.new_cache, recompute, then) if cfg.use_cache else recompute
        ids = generate(step, prompts, layout.eos_id, layout.pad_id, cfg, device=video.device)
        return layout.decode(ids)

    @torch.no_grad()
    def generate_video(
        self, captions: Sequence[str], num_frames: int | None = None, decode: DecodeConfig | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a clip for each caption: the decoder continues ``prompt caption EOS BOV`` with visual ids only (as
        many as a clip of ``num_frames`` frames has), and the pixel decoder turns them into frames. A model trained
        with ``text_first > 0`` has learnt this order.

        Args:
            captions: B captions.
            num_frames: frames per clip (default: the model's ``front_end.num_frames``).
            decode: decoding options (default: greedy).

        Returns:
            frames ``[B, T, 3, s, s]`` in the space of :attr:`transform`'s output (normalised) and the visual ids'
            code indices long ``[B, M]``.
        """
        if self.config.text_first <= 0:
            raise ConfigError(
                "text_first: this model never saw a caption before a clip (trained with text_first 0), so it cannot "
                "write clips from captions"
            )
        t = num_frames or self.config.front_end.num_frames
        dev = self.decoder.head.weight.device
        size = self.front_end.image_size
        m = self.front_end(torch.zeros(1, t, 3, size, size, device=dev)).tokens.shape[1]  # tokens of such a clip
        text, _, lengths = self.build_targets(list(captions))
        prompts = [row[:n].tolist() + [self.bov_id] for row, n in zip(text, lengths.tolist(), strict=True)]
        cfg = dataclasses.replace(decode or DecodeConfig(strategy="greedy"), max_new_tokens=m)
        lo, hi = self.visual_offset, self.visual_offset + self.quantizer.codebook_size

        def visual_only(logits: torch.Tensor) -> torch.Tensor:
            logits[:, :lo] = float("-inf")  # only visual ids: a clip has exactly m of them
            logits[:, hi:] = float("-inf")
            return logits

        def recompute(tokens: torch.Tensor, rows: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
            return visual_only(self.decoder(tokens, None, cache)[:, -1])

        def then(last: torch.Tensor, cache: KVCache) -> torch.Tensor:
            return visual_only(self.decoder(last, None, cache)[:, -1])

        step = Cached(self.decoder.new_cache, recompute, then) if cfg.use_cache else recompute
        ids = generate(step, prompts, self.eov_id, self.layout.pad_id, cfg, device=dev)
        indices = torch.tensor(ids, dtype=torch.long, device=dev) - self.visual_offset
        frames = self.pixel_decoder(self.quantizer.indices_to_codes(indices), None, t)
        return frames, indices


__all__ = ["EarlyFusionConfig", "PixelDecoderConfig", "PixelDecoder", "EarlyFusion"]
