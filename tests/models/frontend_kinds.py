"""Every kind of video front-end tower, built on tiny sources that the tests write themselves.

``make_sources(root)`` saves a tiny HF CLIP vision model, a tiny HF DINOv2 and a tiny timm ViT under ``root``;
``tower_configs(root)`` names one :class:`TowerConfig` per kind. Every tower reads 32 x 32 frames and has one
prefix token, so a family's pooler works with any of them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidvlm.models.frontend import TowerConfig
from vidvlm.models.vision import VisionConfig

KINDS = [
    "native",
    "pretrained_hf",
    "pretrained_timm",
    "framewise_hf",
    "framewise_timm",
    "ensemble",
    "ensemble_per_frame",
    "multilevel",
]
TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}


def make_sources(root: Path) -> Path:
    """Write the tiny pretrained sources (once) and return ``root``."""
    import timm
    import transformers

    if (root / "done").is_file():
        return root
    torch.manual_seed(0)
    clip = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    transformers.CLIPVisionModel(clip).save_pretrained(root / "clip")
    dino = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
    )
    transformers.Dinov2Model(dino).save_pretrained(root / "dino")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TIMM_KWARGS)
    save_file(vit.state_dict(), str(root / "vit.safetensors"))
    (root / "done").write_text("")
    return root


def native_vision(**overrides) -> VisionConfig:
    base = dict(image_size=32, patch_size=16, width=32, depth=2, num_heads=2, num_tubelets=4, layout="divided")
    return VisionConfig(**{**base, **overrides})


def tower_configs(root: Path) -> dict[str, TowerConfig]:
    """One tower config per kind in ``KINDS``, reading the sources of :func:`make_sources`."""
    video = VisionConfig(layout="divided", num_tubelets=4)  # a pretrained source keeps only these video fields
    clip = TowerConfig("pretrained", video, source=str(root / "clip"))
    return {
        "native": TowerConfig("native", native_vision()),
        "pretrained_hf": clip,
        "pretrained_timm": TowerConfig(
            "pretrained",
            VisionConfig(layout="joint", num_tubelets=4),
            source="timm:vit_tiny_patch16_224",
            weights=str(root / "vit.safetensors"),
            timm_kwargs={"num_heads": 2, "img_size": 32},
        ),
        "framewise_hf": TowerConfig("framewise", source=str(root / "dino")),
        "framewise_timm": TowerConfig(
            "framewise",
            source="timm:vit_tiny_patch16_224",
            weights=str(root / "vit.safetensors"),
            timm_kwargs=dict(TIMM_KWARGS),
        ),
        # the second member reads the clip at 16 px (its own input size) and is resampled to the first one's grid
        "ensemble": TowerConfig(
            "ensemble",
            members=[TowerConfig("native", native_vision(width=16)), dataclasses.replace(clip, input_size=16)],
        ),
        # a two-frame-tubelet tower run on every frame alone (one step per frame) beside one run on the clip (one
        # step per two frames, each step repeated for the frames it covers)
        "ensemble_per_frame": TowerConfig(
            "ensemble",
            members=[
                TowerConfig("native", native_vision(tubelet_size=2), per_frame=True),
                TowerConfig("native", native_vision(tubelet_size=2, width=16)),
            ],
        ),
        "multilevel": TowerConfig("native", native_vision(), layers=[-2, -1]),
    }
