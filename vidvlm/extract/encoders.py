"""What to run for each extraction level, for a vidvlm family or a bare vision tower.

An :class:`Encoder` maps a batch of equal-shape clips ``[B, T, 3, H, W]`` to one tensor per clip. It asks the model
its declared abilities: ``pooled`` needs ``embed_video`` (the family's own ``encode_video``); the other levels need
``front_end`` and read the family's :class:`~vidvlm.models.frontend.VideoFrontEnd`: ``frames`` its tower's
per-frame ``pooler_output``, ``tokens`` its visual tokens (as the family consumes them, after the connector),
``layers`` its tower's hidden states. A bare tower (HF CLIP/SigLIP directory, ``timm:<name>``) has no video head:
it is wrapped in a front-end that pools its per-frame embeddings by their mean, which defines its ``pooled``
feature, and its ``tokens`` are all of its tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from vidvlm.errors import ConfigError
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.models.base import EMBED_VIDEO, FRONT_END, VLMModel
from vidvlm.models.frontend import FrontEndConfig, VideoFrontEnd

LEVELS = ("pooled", "frames", "tokens", "layers")


def tower_front_end(tower: nn.Module) -> VideoFrontEnd:
    """A bare tower as a front-end whose one token is the mean over frames of the per-frame embeddings."""
    cfg = FrontEndConfig(pool_input="frame", pooler=PoolerConfig("meanP"), num_frames=8)
    return VideoFrontEnd(cfg, tower=tower)


class Encoder:
    """A model prepared for one extraction level.

    Args:
        model: a vidvlm family, a :class:`VideoFrontEnd`, or a bare tower (returning ``VisionOutput``).
        level: one of ``pooled``, ``frames``, ``tokens``, ``layers``.
        layers: hidden-state indices for ``layers``.
        transform: the eval transform, uint8 ``[T,3,H,W]`` -> float ``[T,3,H,W]``.
        device: where to run.

    Raises:
        ConfigError: the family cannot serve the level (it names the family and the missing ability).
    """

    def __init__(
        self,
        model: nn.Module,
        level: str,
        layers: Sequence[int] | None,
        transform: Callable | None,
        device: torch.device,
    ):
        if level not in LEVELS:
            raise ConfigError(f"level: {level!r} is not one of {list(LEVELS)}")
        self.family = model if isinstance(model, VLMModel) else None
        if self.family is not None:
            if level == "pooled":
                self.family.require(EMBED_VIDEO, "extract pooled features")
                self.front_end = None
            else:
                self.family.require(FRONT_END, f"extract {level!r} features")
                self.front_end = self.family.front_end
        else:
            self.front_end = model if isinstance(model, VideoFrontEnd) else tower_front_end(model)
        self.model = model.to(device).eval()
        self.level, self.layers, self.device = level, list(layers or []), device
        self.transform = transform
        if transform is None:
            raise ConfigError(f"model: {type(model).__name__} has no eval transform; pass transform=")
        param = next(self.model.parameters(), None)
        self.dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def __call__(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Features of equal-shape clips.

        Args:
            video: float ``[B, T, 3, H, W]``, all frames real (no padding).

        Returns:
            ``B`` float32 CPU tensors: ``[D]``, ``[T', D]``, ``[M, D]`` or ``[L, T', N, D]`` by level.
        """
        video = video.to(self.device, self.dtype, non_blocking=True)
        fe = self.front_end
        if self.level == "pooled" and self.family is not None:
            out = self.family.encode_video(video)  # [B, D]
        elif self.level == "pooled":
            out = fe(video).tokens[:, 0]  # the meanP token: [B, D]
        elif self.level == "frames":
            out = fe.encode(video).pooler_output  # [B, T', D]
        elif self.level == "tokens" and self.family is not None:
            out = fe(video).tokens  # [B, M, D]
        elif self.level == "tokens":
            out = rearrange(fe.encode(video).last_hidden_state, "b t n d -> b (t n) d")
        else:
            hidden = fe.base_tower(video, output_hidden_states=self.layers).hidden_states
            out = torch.stack(list(hidden), dim=1)  # [B, L, T', N, D]
        return list(out.float().cpu().unbind(0))


def _hf_transform(path: Path, tower: nn.Module) -> Callable:
    """The eval transform an HF vision directory asks for (its ``preprocessor_config.json``), else CLIP's."""
    from vidvlm.data.transforms import CenterCrop, Compose, Normalize, Resize, build_transform

    pre = path / "preprocessor_config.json"
    if pre.is_file():
        cfg = json.loads(pre.read_text())
        crop = cfg.get("crop_size") or cfg.get("size") or {}
        size = cfg.get("size") or {}
        crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) and "height" in crop else crop
        short = size.get("shortest_edge") if isinstance(size, dict) else size
        steps = [Resize(short or crop_hw), CenterCrop(crop_hw)] if short else [Resize(crop_hw)]
        return Compose([*steps, Normalize(cfg["image_mean"], cfg["image_std"])])
    image_size = tower.image_size
    preset = "siglip" if "siglip" in json.loads((path / "config.json").read_text()).get("model_type", "") else "clip"
    return build_transform(image_size, preset=preset)


def resolve_model(
    model: Any,
    level: str,
    layers: Sequence[int] | None,
    device: torch.device,
    weights: str | None = None,
    transform: Callable | None = None,
) -> Encoder:
    """Load ``model`` (object, vidvlm checkpoint dir, HF vision dir or ``timm:<name>``) as an :class:`Encoder`.

    ``transform`` overrides the model's own eval transform. An :class:`Encoder` is returned as it is, so that a
    model loaded once can serve many calls.
    """
    if isinstance(model, Encoder):
        if model.level != level or model.layers != list(layers or []):
            raise ConfigError(f"model: this Encoder was prepared for level {model.level!r}, asked for {level!r}")
        return model
    if isinstance(model, VLMModel):
        return Encoder(model, level, layers, transform or model.transform, device)
    if isinstance(model, nn.Module):
        if transform is None:
            raise ConfigError(f"model: a bare {type(model).__name__} has no eval transform; pass transform=")
        return Encoder(model, level, layers, transform, device)
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"model: expected a module, a directory or 'timm:<name>', got {type(model).__name__}")
    spec = os.fspath(model)
    from vidvlm.models.towers import load_vision_tower

    if spec.startswith("timm:"):
        # a timm weights file says nothing of its normalisation: the caller names the transform
        return Encoder(load_vision_tower(spec, weights=weights), level, layers, transform, device)
    path = Path(spec)
    if (path / "config.yaml").is_file():  # a vidvlm checkpoint: config.yaml names the family
        import vidvlm.models.registry as registry

        family = registry.load(path)
        return Encoder(family, level, layers, transform or family.transform, device)
    if (path / "config.json").is_file():
        tower = load_vision_tower(spec)
        transform = transform or _hf_transform(path, tower)
        return Encoder(tower, level, layers, transform, device)
    raise ConfigError(f"{spec}: not a vidvlm checkpoint (config.yaml), an HF vision directory (config.json) "
                      "or 'timm:<name>'")  # fmt: skip
