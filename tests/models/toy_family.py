"""A toy family, written as docs/adding_a_family.md shows: a video classifier on the shared front-end.

Importing this module registers it as ``toy_probe``; the contract tests then run over it like any built-in family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidvlm.layers.pooling import masked_mean
from vidvlm.models.base import EMBED_VIDEO, FRONT_END, VLMModel
from vidvlm.models.frontend import FrontEndConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.registry import register_family
from vidvlm.models.vision import VisionConfig


@dataclass
class ProbeConfig:
    family: str = "toy_probe"
    front_end: FrontEndConfig = field(default_factory=FrontEndConfig)
    num_classes: int = 4

    @classmethod
    def tiny(cls, **overrides: Any) -> ProbeConfig:
        vision = VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_tubelets=4)
        return cls(front_end=FrontEndConfig(tower=TowerConfig(vision=vision), num_frames=4), **overrides)


@register_family("toy_probe")
class ProbeModel(VLMModel):
    """``video [B, T, 3, H, W]`` -> front-end tokens -> mean -> class logits; loss: cross-entropy on ``label``."""

    config_class = ProbeConfig
    abilities = frozenset({EMBED_VIDEO, FRONT_END})

    def __init__(self, config: ProbeConfig) -> None:
        super().__init__(config)
        self.front_end = VideoFrontEnd(config.front_end)
        self.head = nn.Linear(self.front_end.width, config.num_classes)

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``video [B, T, 3, H, W]`` -> L2-normalised ``[B, D]``."""
        out = self.front_end(video, frame_mask)
        return F.normalize(masked_mean(out.tokens, out.mask), dim=-1)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.front_end(batch["video"], batch.get("frame_mask"))
        logits = self.head(masked_mean(out.tokens, out.mask))
        return {"probe_loss": F.cross_entropy(logits, batch["label"].to(logits.device))}

    def config_for_save(self) -> ProbeConfig:
        return dataclasses.replace(self.config, front_end=self.front_end.resolved_config())
