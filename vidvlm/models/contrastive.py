"""Contrastive family (CLIP / SigLIP over video): a video front-end and a text tower, projected to one space.

    video [B,T,3,H,W] ──VideoFrontEnd (tower ▶ pooler)──▶ [B,M,D] ──mean over real tokens──▶ [B,D]
                      ──video_proj──▶ [B,E] ──L2──▶ video embedding
    captions ──tokenizer──▶ ids [B,L] ──text tower──▶ pooled [B,Dt] ──text_proj──▶ [B,E] ──L2──▶ text embedding

Losses (``vidvlm.losses``): ``clip`` (symmetric InfoNCE with a learnable temperature, ``logit_scale`` initialised to
``log(1/0.07)`` and capped at 100 after ``exp``) or ``siglip`` (sigmoid loss with ``logit_scale`` = ``log 10`` and
``logit_bias`` = -10). Both gather features with gradient across processes; ``local_loss`` scores only local rows.

Several captions per video: with ``captions_per_video = K > 1`` the forward pass takes K captions of every video
from the batch's ``captions`` lists (a random K in training, cycling when a video has fewer; the first K in eval)
and treats all captions of a video as its positives (see ``vidvlm.losses``). With K = 1 it uses ``text``.

Hard negatives (NegCLIP, :mod:`vidvlm.models.negatives`): with ``hard_negatives = N > 0`` each training batch adds
up to N of every video's ``negatives`` (texts that do not describe the clip) as text columns positive for no video.

Locking (LiT): ``lock_vision`` freezes the vision tower except its last ``lock_vision_unlocked_layers`` blocks (and
its final norm when some are unlocked); the pooler and projections stay trainable. ``lock_text`` likewise.
Module-name prefixes for training stages: ``front_end.tower.``, ``front_end.pooler.``, ``video_proj.``, ``text.``,
``text_proj.``, ``logit_scale``, ``logit_bias``.

Tokenizer: ``tokenizer`` names a local directory, else an ``hf`` text tower's ``source`` is used, else one is trained
on the training captions by ``prepare_for_training`` (the trainer calls it; see :class:`~vidvlm.models.base.VLMModel`).
It is saved with the model, and loading a checkpoint always uses the saved one.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vidvlm.devices import to_device
from vidvlm.errors import ConfigError
from vidvlm.layers.pooling import masked_mean
from vidvlm.losses import clip_loss, siglip_loss
from vidvlm.models.base import EMBED_TEXT, EMBED_VIDEO, FRONT_END, VLMModel, lock_tower
from vidvlm.models.frontend import FrontEndConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.negatives import NegativeDraw, check_hard_negatives, negative_targets
from vidvlm.models.registry import register_family
from vidvlm.models.text import TextConfig, build_text_tower, save_text_tower_config, tokenizer_source
from vidvlm.models.tokenizer import TextTokenizer, TokenizerKind
from vidvlm.models.vision import VideoViT, VisionConfig, migrate_vision


@dataclass
class ContrastiveConfig:
    """A contrastive video-text model.

    Attributes:
        family: always ``"contrastive"``.
        front_end: the video front-end (tower, pooler, frames, input size, normalisation); the default pools the
            per-frame embeddings by their mean (CLIP4Clip meanP) with no connector.
        text: the text tower.
        embed_dim: width E of the joint embedding space.
        loss: ``"clip"`` or ``"siglip"``.
        local_loss: score only local rows against gathered columns (saves memory across processes).
        logit_scale_init: initial ``log`` of the logit scale (None: ``log(1/0.07)`` for clip, ``log 10`` for siglip).
        logit_bias_init: initial SigLIP bias.
        lock_vision: freeze the vision tower (LiT).
        lock_vision_unlocked_layers: with ``lock_vision``, keep the last N blocks trainable.
        lock_text: freeze the text tower.
        lock_text_unlocked_layers: with ``lock_text``, keep the last N blocks trainable.
        tokenizer: a local tokenizer directory, or None (use ``text.source`` for hf towers, else train one).
        tokenizer_kind: kind of tokenizer trained on captions: ``bpe`` (needs a vocabulary above 260), ``wordpiece``,
            ``word``.
        captions_per_video: K captions per video in each training batch (multi-positive when K > 1).
        hard_negatives: up to N hard negative captions per video in each training batch, drawn from the batch's
            ``negatives`` (0: none).
    """

    family: str = "contrastive"
    front_end: FrontEndConfig = field(default_factory=lambda: FrontEndConfig(pool_input="frame"))
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    loss: Literal["clip", "siglip"] = "clip"
    local_loss: bool = False
    logit_scale_init: float | None = None
    logit_bias_init: float = -10.0
    lock_vision: bool = False
    lock_vision_unlocked_layers: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    tokenizer: str | None = None
    tokenizer_kind: TokenizerKind = "bpe"
    captions_per_video: int = 1
    hard_negatives: int = 0

    def __post_init__(self) -> None:
        if self.family != "contrastive":
            raise ConfigError(f"family: ContrastiveConfig is for 'contrastive', got {self.family!r}")
        if self.loss not in ("clip", "siglip"):
            raise ConfigError(f"loss: expected clip or siglip, got {self.loss!r}")
        if self.captions_per_video < 1:
            raise ConfigError(f"captions_per_video: must be >= 1, got {self.captions_per_video}")
        check_hard_negatives(self.hard_negatives)
        if self.front_end.connector.name != "none":
            raise ConfigError("front_end.connector: the contrastive family projects with video_proj; use name: none")

    @classmethod
    def tiny(cls, **overrides: Any) -> ContrastiveConfig:
        """A minute model for tests: 32x32 frames, width 32, two blocks per tower, a word-level tokenizer."""
        vision = VisionConfig(image_size=32, patch_size=16, width=32, depth=2, num_heads=2, num_tubelets=4)
        base: dict[str, Any] = dict(
            front_end=FrontEndConfig(tower=TowerConfig(vision=vision), pool_input="frame", num_frames=4),
            text=TextConfig(vocab_size=128, context_length=16, width=32, depth=2, num_heads=2),
            embed_dim=16,
            tokenizer_kind="word",
        )
        base.update(overrides)
        return cls(**base)


@register_family("contrastive")
class ContrastiveModel(VLMModel):
    """CLIP / SigLIP over video (see the module docstring).

    Args:
        config: the :class:`ContrastiveConfig`.
        tokenizer: an already loaded tokenizer (else resolved from the config, or trained later).
    """

    config_class = ContrastiveConfig
    abilities = frozenset({EMBED_VIDEO, EMBED_TEXT, FRONT_END})
    legacy_prefixes = {"vision.": "front_end.tower.", "pooler.": "front_end.pooler."}

    def __init__(self, config: ContrastiveConfig, tokenizer: TextTokenizer | None = None, *, _restore: Any = None):
        super().__init__(config)
        cfg = config
        self.draw_negatives = NegativeDraw(cfg.hard_negatives)
        self.front_end = VideoFrontEnd(cfg.front_end)
        width = self.front_end.width
        self.video_proj = nn.Linear(width, cfg.embed_dim, bias=False)
        self.text = build_text_tower(cfg.text, checkpoint_dir=_restore)
        self.text_proj = nn.Linear(self.text.width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.video_proj.weight, std=width**-0.5)
        nn.init.normal_(self.text_proj.weight, std=self.text.width**-0.5)
        scale_init = cfg.logit_scale_init
        if scale_init is None:
            scale_init = math.log(10.0) if cfg.loss == "siglip" else math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(float(scale_init)))
        # only SigLIP has a bias: an unused parameter would break DDP without find_unused_parameters
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.logit_bias_init))) if cfg.loss == "siglip" else None
        # a restored checkpoint brings its own saved tokenizer (_build_for_restore)
        self._adopt_tokenizer(tokenizer, None if _restore is not None else tokenizer_source(cfg.tokenizer, cfg.text))
        self.apply_locks()

    # -- setup -------------------------------------------------------------------------------------------------
    def _check_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Its ids must fit the text tower's embedding table."""
        rows = self.text.vocab_rows
        if tokenizer.vocab_size > rows:
            raise ConfigError(
                f"text.vocab_size: the tokenizer has {tokenizer.vocab_size} ids but the text tower embeds {rows}"
            )

    def _train_tokenizer(self, captions: list[str]) -> TextTokenizer:
        return TextTokenizer.train(captions, vocab_size=self.text.vocab_rows, kind=self.config.tokenizer_kind)

    def apply_locks(self) -> None:
        """Freeze the towers as the config's ``lock_*`` fields say (LiT)."""
        cfg = self.config
        if cfg.lock_vision:
            tower = self.front_end.base_tower
            if not isinstance(tower, VideoViT):
                raise ConfigError("lock_vision: partial locking needs a video-ViT tower; use front_end.freeze_tower")
            lock_tower(tower, tower.blocks, cfg.lock_vision_unlocked_layers, [tower.norm])
        if cfg.lock_text:
            lock_tower(self.text, self.text.layers, cfg.lock_text_unlocked_layers, self.text.final_modules)

    def train(self, mode: bool = True) -> ContrastiveModel:
        """Set training mode, but keep fully locked towers in eval mode (LiT: a locked tower is deterministic, so an
        HF tower's dropout stays off). The front-end does the same for a frozen vision tower."""
        super().train(mode)
        if self.config.lock_text and self.config.lock_text_unlocked_layers == 0:
            self.text.eval()
        return self

    # -- encoders ----------------------------------------------------------------------------------------------
    def video_features(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised video embeddings: ``video [B, T, 3, H, W]``, ``frame_mask`` bool ``[B, T]`` -> ``[B, E]``."""
        out = self.front_end(video, frame_mask)
        # poolers with one group of tokens per frame leave zeros for padded frames: average real tokens only
        return self.video_proj(masked_mean(out.tokens, out.mask))

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised video embeddings ``[B, E]`` of ``video [B, T, 3, H, W]`` (after :attr:`transform`)."""
        return F.normalize(self.video_features(video, frame_mask), dim=-1)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` long ``[B, L]`` and ``attention_mask`` bool ``[B, L]`` on the model's device."""
        ids, mask = self.require_tokenizer().encode(texts, self.config.text.context_length)
        device = self.text_proj.weight.device
        return to_device(ids, device), to_device(mask, device)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised text embeddings ``[B, E]``."""
        _, pooled = self.text(*self.tokenize(texts))
        return self.text_proj(pooled)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, E]`` of B strings."""
        return F.normalize(self.text_features(texts), dim=-1)

    # -- training ----------------------------------------------------------------------------------------------
    def select_captions(self, batch: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
        """The texts of a batch and the video index of each (``[B*K]``, K = ``captions_per_video``)."""
        k = self.config.captions_per_video
        b = batch["video"].shape[0]
        if k == 1 or not batch.get("captions"):
            texts = list(batch["text"])
            if len(texts) != b:
                raise ValueError(f"batch: {len(texts)} texts for {b} videos")
            return texts, torch.arange(b)
        texts = []
        for i, caps in enumerate(batch["captions"]):
            caps = list(caps) or [batch["text"][i]]
            # training draws from python's RNG, which the trainer seeds per step and rank
            order = random.sample(caps, len(caps)) if self.training else caps
            texts.extend(order[j % len(order)] for j in range(k))
        return texts, torch.arange(b).repeat_interleave(k)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Contrastive loss of a collated batch.

        Args:
            batch: ``video [B, T, 3, H, W]``, optional ``frame_mask`` bool ``[B, T]``, ``text`` (B strings),
                with ``captions_per_video > 1`` ``captions`` (B lists of strings), and with ``hard_negatives > 0``
                ``negatives`` (B lists of strings).

        Returns:
            ``contrastive_loss`` plus detached scalars for logging: ``logit_scale`` (after exp) and, for SigLIP,
            ``logit_bias``.
        """
        texts, t2v = self.select_captions(batch)
        negatives = self.draw_negatives(batch, texts, self.training)
        if negatives:  # columns positive for no video
            texts, t2v = texts + negatives, negative_targets(t2v, len(negatives))
        video = self.encode_video(batch["video"], batch.get("frame_mask"))
        text = self.encode_text(texts)  # t2v stays on the host: the loss checks it there, then moves it
        if self.config.loss == "clip":
            scale = self.logit_scale.exp().clamp(max=100.0)
            loss = clip_loss(video, text, scale, t2v, local_loss=self.config.local_loss)
            out = {"contrastive_loss": loss, "logit_scale": scale.detach()}
        else:
            scale = self.logit_scale.exp()
            loss = siglip_loss(video, text, scale, self.logit_bias, t2v, local_loss=self.config.local_loss)
            out = {"contrastive_loss": loss, "logit_scale": scale.detach(), "logit_bias": self.logit_bias.detach()}
        return out

    # -- checkpoints -------------------------------------------------------------------------------------------
    def config_for_save(self) -> ContrastiveConfig:
        """The config with the resolved front-end (no pretrained source, which the weights replace)."""
        return dataclasses.replace(self.config, front_end=self.front_end.resolved_config(), tokenizer=None)

    def _save_extra(self, directory: Path) -> None:
        super()._save_extra(directory)
        save_text_tower_config(self.text, directory)

    @classmethod
    def _build_for_restore(cls, config: ContrastiveConfig, directory: Path) -> ContrastiveModel:
        return cls._restore_tokenizer(cls(config, _restore=directory), directory)

    @classmethod
    def migrate_config(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Configs written before the front-end: ``vision``/``vision_source``/``pooler``/``pool_input``/
        ``image_size``/``normalize`` become ``front_end``."""
        if "front_end" in data or "vision" not in data:
            return data
        data = dict(data)
        vision = migrate_vision(data.pop("vision"))
        source, weights = data.pop("vision_source", None), data.pop("vision_weights", None)
        tower = {"name": "native", "vision": vision}
        if source is not None:
            tower = {"name": "pretrained", "vision": vision, "source": source, "weights": weights}
        frames = vision.get("num_tubelets", 8) * vision.get("tubelet_size", 1)
        data["front_end"] = {
            "tower": tower,
            "pool_input": data.pop("pool_input", "frame"),
            "pooler": data.pop("pooler", {"name": "meanP"}),
            "connector": {"name": "none"},
            "num_frames": frames,
            "image_size": data.pop("image_size", None),
            "normalize": data.pop("normalize", "clip"),
        }
        return data


__all__ = ["ContrastiveConfig", "ContrastiveModel"]
