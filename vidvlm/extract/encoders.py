"""What to run for each extraction level, for a vidvlm family or a bare vision tower.

An :class:`Encoder` maps a batch of equal-shape clips ``[B, T, 3, H, W]`` to one tensor per clip. Families give
``pooled`` through their own ``encode_video``; the other levels read the family's vision tower (``frames``: its
per-frame ``pooler_output``; ``layers``: its hidden states) and, for ``tokens``, the family's pooler applied to what
the family pools (all tokens, or per-frame embeddings when its ``config.pool_input`` is ``"frame"``). A bare
tower (HF CLIP/SigLIP directory, ``timm:<name>``) has no video head, so its ``pooled`` feature is defined here as
the mean over frames of the per-frame ``pooler_output``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange, reduce
from torch import nn

from vidvlm.errors import ConfigError

# Attribute names under which families keep their vision tower and token pooler.
_TOWER_NAMES = ("vision", "visual", "vision_tower", "vision_model", "tower")
_POOLER_NAMES = ("pooler", "video_pooler", "token_pooler")


def _find(model: nn.Module, names: Sequence[str]) -> nn.Module | None:
    return next((getattr(model, n) for n in names if isinstance(getattr(model, n, None), nn.Module)), None)


class Encoder:
    """A model prepared for one extraction level.

    Args:
        model: the family (has ``encode_video``) or the bare tower.
        level: one of ``pooled``, ``frames``, ``tokens``, ``layers``.
        layers: hidden-state indices for ``layers``.
        transform: the eval transform, uint8 ``[T,3,H,W]`` -> float ``[T,3,H,W]``.
        device: where to run.
    """

    def __init__(
        self,
        model: nn.Module,
        level: str,
        layers: Sequence[int] | None,
        transform: Callable | None,
        device: torch.device,
    ):
        self.model = model.to(device).eval()
        self.is_family = hasattr(model, "encode_video")
        self.tower = _find(model, _TOWER_NAMES) if self.is_family else model
        self.pooler = _find(model, _POOLER_NAMES) if self.is_family else None
        # What the family's pooler reads: "tokens" (all tower tokens) or "frame" (per-frame pooled embeddings).
        self.pool_input = getattr(getattr(model, "config", None), "pool_input", "tokens")
        self.level, self.layers, self.device = level, list(layers or []), device
        self.transform = transform
        if transform is None:
            raise ConfigError(f"model: {type(model).__name__} has no eval transform; pass transform=")
        if level != "pooled" and self.tower is None:
            raise ConfigError(f"level {level!r}: {type(model).__name__} exposes no vision tower ({_TOWER_NAMES})")
        param = next(self.model.parameters(), None)
        self.dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32

    def __call__(self, video: torch.Tensor) -> list[torch.Tensor]:
        """Features of equal-shape clips.

        Args:
            video: float ``[B, T, 3, H, W]``, all frames real (no padding).

        Returns:
            ``B`` float32 CPU tensors: ``[D]``, ``[T, D]``, ``[M, D]`` or ``[L, T, N, D]`` by level.
        """
        video = video.to(self.device, self.dtype, non_blocking=True)
        if self.level == "pooled" and self.is_family:
            out = self.model.encode_video(video)  # [B, D]
        elif self.level == "pooled":
            out = reduce(self.tower(video).pooler_output, "b t d -> b d", "mean")
        elif self.level == "frames":
            out = self.tower(video).pooler_output  # [B, T, D]
        elif self.level == "tokens":
            tower_out = self.tower(video)
            if self.pooler is None:
                out = rearrange(tower_out.last_hidden_state, "b t n d -> b (t n) d")
            elif self.pool_input == "frame":  # the family pools per-frame embeddings, as [B, T, 1, D]
                out = self.pooler(rearrange(tower_out.pooler_output, "b t d -> b t 1 d"))
            else:
                out = self.pooler(tower_out.last_hidden_state)  # [B, M, D]
        else:
            hidden = self.tower(video, output_hidden_states=self.layers).hidden_states
            out = torch.stack(list(hidden), dim=1)  # [B, L, T, N, D]
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
    image_size = getattr(getattr(tower, "cfg", None), "image_size", None) or 224
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
    if isinstance(model, nn.Module):
        return Encoder(model, level, layers, transform or getattr(model, "transform", None), device)
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"model: expected a module, a directory or 'timm:<name>', got {type(model).__name__}")
    spec = os.fspath(model)
    from vidvlm.models.towers import load_vision_tower

    if spec.startswith("timm:"):
        tower = load_vision_tower(spec, weights=weights)
        return Encoder(tower, level, layers, transform or getattr(tower, "transform", None), device)
    path = Path(spec)
    if (path / "config.yaml").is_file():  # a vidvlm checkpoint: config.yaml names the family
        import vidvlm.models.registry as registry

        family = registry.load(path)
        return Encoder(family, level, layers, transform or family.transform, device)
    if (path / "config.json").is_file():
        tower = load_vision_tower(spec)
        transform = transform or getattr(tower, "transform", None) or _hf_transform(path, tower)
        return Encoder(tower, level, layers, transform, device)
    raise ConfigError(f"{spec}: not a vidvlm checkpoint (config.yaml), an HF vision directory (config.json) "
                      "or 'timm:<name>'")  # fmt: skip
