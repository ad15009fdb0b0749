"""Configs of the masking family (:mod:`vidvlm.models.masking`): :class:`MaskingConfig` (FLAVA's defaults) and
:class:`XFMConfig` (X-FM's). The objectives and their weights are described in the family's module docstring."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from vidvlm.errors import ConfigError
from vidvlm.layers.masking import MASK_KINDS, MaskKind
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.frontend import FrontEndConfig, TowerConfig
from vidvlm.models.negatives import check_hard_negatives
from vidvlm.models.text import TextConfig
from vidvlm.models.tokenizer import TokenizerKind
from vidvlm.models.vision import VisionConfig

WEIGHTS = (
    "itc_weight", "itm_weight", "mlm_weight", "video_mlm_weight", "mvm_weight", "mmm_weight", "tmim_weight",
    "bbox_weight",
)  # fmt: skip


def _front_end() -> FrontEndConfig:
    # T per-frame means + per-position temporal means: the fusion encoder reads space and time
    return FrontEndConfig(pool_input="tokens", pooler=PoolerConfig("video_chatgpt", {"num_prefix_tokens": 1}))


@dataclass
class MaskingConfig:
    """A FLAVA-style masking model (see the module docstring); :class:`XFMConfig` holds X-FM's defaults.

    Attributes:
        family: ``"flava"`` (``"xfm"`` in :class:`XFMConfig`).
        front_end: the video front-end; its pooler's tokens are the fusion encoder's context.
        text: the text encoder (bidirectional for MLM).
        embed_dim: width E of the ITC space.
        fusion_depth: fusion blocks (self-attention, cross-attention to the video, MLP).
        fusion_heads: their attention heads.
        itc_weight: weight of ``itc_loss``.
        itm_weight: weight of ``itm_loss``.
        mlm_weight: weight of ``mlm_loss`` (text alone).
        video_mlm_weight: weight of ``video_mlm_loss`` (text with the video as context).
        mvm_weight: weight of ``mvm_loss`` (masked video modelling; needs a video-ViT tower).
        mmm_weight: weight of ``mmm_loss`` (masked multimodal modelling; needs a video-ViT tower).
        tmim_weight: weight of ``tmim_loss`` (text-guided masked video modelling; needs a video-ViT tower).
        bbox_weight: weight of ``bbox_loss`` (box of the described shape; needs ``boxes`` in the batch).
        mlm_ratio: share of each caption's tokens predicted by ``mlm_loss``.
        video_mlm_ratio: share predicted by ``video_mlm_loss``.
        mvm_ratio: share of patch positions hidden from the encoder in ``mvm_loss`` (VideoMAE: 0.9).
        mvm_mask: ``tube`` (the same positions in every time step) or ``random``; also the kind of ``mmm`` and
            ``tmim`` masks.
        mmm_video_ratio: share of patch positions hidden in ``mmm_loss`` (FLAVA: about 0.4).
        mmm_text_ratio: share of each caption's tokens hidden and predicted in ``mmm_loss``.
        tmim_ratio: share of patch positions hidden in ``tmim_loss``.
        mvm_norm_pix: predict per-tubelet normalised pixels.
        decoder_width: width of the ``mvm`` decoder.
        decoder_depth: its blocks.
        decoder_heads: its attention heads.
        stop_gradient: the fusion encoder reads a detached copy of the text encoder's output (X-FM).
        itm_sample: draw hard negatives in proportion to ``softmax(similarity)`` (ALBEF); False takes the hardest.
        hard_negatives: up to N of each clip's hard negative captions (the batch's ``negatives``) as extra text
            columns of ``itc_loss`` in training (0: none; needs ``itc_weight > 0``; :mod:`vidvlm.models.negatives`).
        logit_scale_init: initial ``log`` of the ITC logit scale.
        tokenizer: a local tokenizer directory, or None (``text.source`` for hf towers, else trained on captions).
        tokenizer_kind: kind of tokenizer trained on captions (``bpe``, ``wordpiece``, ``word``).
    """

    family: Literal["flava", "xfm"] = "flava"
    front_end: FrontEndConfig = field(default_factory=_front_end)
    text: TextConfig = field(default_factory=lambda: TextConfig(causal=False, pooling="cls"))
    embed_dim: int = 256
    fusion_depth: int = 6
    fusion_heads: int = 8
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    mlm_weight: float = 1.0
    video_mlm_weight: float = 1.0
    mvm_weight: float = 1.0
    mmm_weight: float = 0.0
    tmim_weight: float = 0.0
    bbox_weight: float = 0.0
    mlm_ratio: float = 0.15
    video_mlm_ratio: float = 0.15
    mvm_ratio: float = 0.9
    mvm_mask: MaskKind = "tube"
    mvm_norm_pix: bool = True
    mmm_video_ratio: float = 0.4
    mmm_text_ratio: float = 0.15
    tmim_ratio: float = 0.9
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    stop_gradient: bool = False
    itm_sample: bool = True
    hard_negatives: int = 0
    logit_scale_init: float = math.log(1 / 0.07)
    tokenizer: str | None = None
    tokenizer_kind: TokenizerKind = "bpe"

    def __post_init__(self) -> None:
        preset = type(self).__dataclass_fields__["family"].default
        if self.family != preset:
            raise ConfigError(f"family: {type(self).__name__} is for {preset!r}, got {self.family!r}")
        for name in WEIGHTS:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not any(getattr(self, name) > 0 for name in WEIGHTS):
            raise ConfigError(f"{'/'.join(WEIGHTS)}: at least one objective needs a weight above 0")
        for name in ("mlm_ratio", "video_mlm_ratio", "mmm_text_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name}: must lie in (0, 1], got {getattr(self, name)}")
        for name in ("mvm_ratio", "mmm_video_ratio", "tmim_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: must lie in [0, 1), got {getattr(self, name)}")
        check_hard_negatives(self.hard_negatives, weight=self.itc_weight, weight_key="itc_weight")
        if self.mvm_mask not in MASK_KINDS:
            raise ConfigError(f"mvm_mask: expected one of {list(MASK_KINDS)}, got {self.mvm_mask!r}")
        if self.masks_text and self.text.kind == "native" and self.text.causal:
            raise ConfigError("text.causal: masked language modelling needs a bidirectional text encoder (false)")

    @property
    def masks_text(self) -> bool:
        """Whether an objective predicts hidden text tokens (``mlm``, ``video_mlm``, ``mmm``)."""
        return self.mlm_weight > 0 or self.video_mlm_weight > 0 or self.mmm_weight > 0

    @property
    def fuses(self) -> bool:
        """Whether an objective reads the fusion encoder (``itm``, ``video_mlm``, ``mmm``, ``bbox``)."""
        return self.itm_weight > 0 or self.video_mlm_weight > 0 or self.mmm_weight > 0 or self.bbox_weight > 0

    @classmethod
    def tiny(cls, **overrides: Any) -> MaskingConfig:
        """A minute model for tests. ``mvm_weight`` is 0 here (as ``mmm`` and ``tmim`` are by default) because the
        contract tests also put frame-wise and ensemble towers (which have no visible-token path) in front; tests of
        ``mvm`` set it."""
        vision = VisionConfig(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, num_tubelets=4)
        front = dataclasses.replace(_front_end(), tower=TowerConfig(vision=vision), num_frames=4)
        base: dict[str, Any] = dict(
            front_end=front,
            text=TextConfig(vocab_size=64, context_length=16, width=32, depth=1, num_heads=2, causal=False),
            embed_dim=16,
            fusion_depth=1,
            fusion_heads=2,
            mvm_weight=0.0,
            decoder_width=16,
            decoder_depth=1,
            decoder_heads=2,
            tokenizer_kind="word",
        )
        base.update(overrides)
        return cls(**base)


@dataclass
class XFMConfig(MaskingConfig):
    """:class:`MaskingConfig` with X-FM's defaults: the fusion reads detached text, half the text is masked when
    the video is its context."""

    family: Literal["flava", "xfm"] = "xfm"
    video_mlm_ratio: float = 0.5
    stop_gradient: bool = True


__all__ = ["MaskingConfig", "XFMConfig", "WEIGHTS"]
