"""Clip-consistent transforms: one crop/flip for all frames, uint8 until normalisation, T = 1 works."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from vidvlm.data.transforms import (
    NORMALIZE_PRESETS,
    CenterCrop,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    build_transform,
)
from vidvlm.errors import ConfigError


def frames_with_ids(t: int, h: int = 48, w: int = 64) -> torch.Tensor:
    """uint8 [T,3,H,W] where every frame has the same random texture plus a per-frame offset."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 200, (1, 3, h, w), generator=g, dtype=torch.uint8)
    return base + torch.arange(t, dtype=torch.uint8).view(t, 1, 1, 1) * 5


def test_random_resized_crop_is_the_same_on_every_frame() -> None:
    video = frames_with_ids(6)
    crop = RandomResizedCrop(32, scale=(0.2, 0.6), interpolation="nearest")
    out = crop(video, generator=torch.Generator().manual_seed(3))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
    # frames differ only by their offset, so with one crop for the clip, out[t] - out[0] == 5 * t everywhere
    diff = out.int() - out[:1].int()
    expected = (torch.arange(6) * 5).view(6, 1, 1, 1).expand_as(diff)
    assert torch.equal(diff, expected)
    # and the crop equals torchvision's resized_crop with the drawn parameters
    top, left, h, w = crop.get_params(48, 64, torch.Generator().manual_seed(3))
    ref = TF.resized_crop(video, top, left, h, w, [32, 32], interpolation=TF.InterpolationMode.NEAREST)
    assert torch.equal(out, ref)
    assert (h, w) != (48, 64)  # a real crop, not the whole frame


def test_crop_params_are_seeded_and_vary() -> None:
    crop = RandomResizedCrop(16)
    a = crop.get_params(64, 64, torch.Generator().manual_seed(1))
    b = crop.get_params(64, 64, torch.Generator().manual_seed(1))
    c = {crop.get_params(64, 64, torch.Generator().manual_seed(s)) for s in range(20)}
    assert a == b and len(c) > 10
    for top, left, h, w in c:
        assert 0 <= top <= 64 - h and 0 <= left <= 64 - w
        assert 0.5 * 64 * 64 * 0.9 <= h * w <= 64 * 64


def test_flip_is_clip_consistent_and_optional() -> None:
    video = frames_with_ids(4)
    flipped = RandomHorizontalFlip(p=1.0)(video)
    assert torch.equal(flipped, video.flip(-1))
    outs = [RandomHorizontalFlip(p=0.5)(video, generator=torch.Generator().manual_seed(s)) for s in range(16)]
    assert any(torch.equal(o, video) for o in outs) and any(torch.equal(o, video.flip(-1)) for o in outs)
    # no flip unless asked for: a training pipeline without hflip never mirrors
    pipe = build_transform(48, preset="none", train=True, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    assert not any(isinstance(t, RandomHorizontalFlip) for t in pipe.transforms)
    assert any(isinstance(t, RandomHorizontalFlip) for t in build_transform(48, train=True, hflip=True).transforms)


def test_uint8_until_normalize() -> None:
    video = frames_with_ids(3)
    x = Resize(32)(video)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 42)  # torchvision truncates 64 * 32 / 48
    x = CenterCrop(32)(x)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32)
    y = Normalize.preset("clip")(x)
    assert y.dtype == torch.float32
    mean, std = NORMALIZE_PRESETS["clip"]
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(y, ref)
    # float input (already on the 0..1 scale) is normalised into a new tensor, never in place
    f = x.float() / 255
    before = f.clone()
    torch.testing.assert_close(Normalize.preset("clip")(f), ref)
    assert torch.equal(f, before)


def test_presets() -> None:
    assert NORMALIZE_PRESETS["clip"] == ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    assert NORMALIZE_PRESETS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    torch.testing.assert_close(Normalize.preset("siglip")(white), torch.ones(1, 3, 2, 2))
    with pytest.raises(ConfigError, match="preset"):
        build_transform(32, preset="nope")


@pytest.mark.parametrize("train", [False, True])
def test_build_transform_shapes_and_single_frame(train: bool) -> None:
    pipe = build_transform(32, preset="imagenet", train=train)
    for t in (1, 5):
        out = pipe(frames_with_ids(t), generator=torch.Generator().manual_seed(0))
        assert out.shape == (t, 3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_eval_transform_is_resize_then_center_crop() -> None:
    video = frames_with_ids(2, 60, 80)
    out = build_transform(32, preset="none", resize_size=40)(video)
    ref = TF.center_crop(TF.resize(video, [40], antialias=True, interpolation=TF.InterpolationMode.BICUBIC), [32, 32])
    torch.testing.assert_close(out, ref.float() / 255)


def test_compose_passes_generator_so_training_is_reproducible() -> None:
    pipe = Compose([RandomResizedCrop(24), RandomHorizontalFlip(), Normalize.preset("clip")])
    video = frames_with_ids(3)
    a = pipe(video, generator=torch.Generator().manual_seed(7))
    b = pipe(video, generator=torch.Generator().manual_seed(7))
    c = pipe(video, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rejects_wrong_layout() -> None:
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        Resize(16)(torch.zeros(3, 16, 16, dtype=torch.uint8))
