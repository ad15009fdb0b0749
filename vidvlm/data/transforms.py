"""Clip-consistent transforms on uint8 video ``[T, 3, H, W]``.

A random transform draws its parameters once per call and applies them to every frame of the clip, so that motion
between frames is preserved. Pixels stay ``uint8`` until :class:`Normalize`, the last step, which returns float.
Randomness comes from the ``generator`` argument (a :class:`torch.Generator`, which the dataset seeds from
``(seed, epoch, index)`` for exact resume) or from torch's global RNG when it is ``None``.

Boxes follow the pixels: :meth:`ClipTransform.with_boxes` transforms a clip and its per-frame boxes (float
``[T, 4]`` pixel corners ``x0, y0, x1, y1``, ends exclusive; NaN rows = no box) with one draw of the random
parameters, the same draw ``__call__`` makes with the same generator. A crop cuts each box to the visible part and a
box wholly outside the crop becomes NaN; a flip mirrors it. A transform that does not know its geometry refuses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from einops import rearrange
from torchvision.transforms import InterpolationMode

from vidvlm.errors import ConfigError

NORMALIZE_PRESETS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def _check_video(video: torch.Tensor) -> None:
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video [T, 3, H, W], got shape {tuple(video.shape)}")


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


class ClipTransform:
    """Base of vidvlm transforms: ``__call__(video [T,3,H,W], generator=None) -> [T,3,H,W]``."""

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def with_boxes(
        self, video: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformed clip and its boxes: ``video [T, 3, H, W]``, ``boxes`` float ``[T, 4]`` pixel corners
        (NaN rows = none) -> ``([T, 3, H', W'], [T, 4])`` in the output's pixels."""
        raise ConfigError(f"{type(self).__name__}: this transform cannot carry boxes (its geometry is unknown)")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _crop_boxes(boxes: torch.Tensor, top: float, left: float, h: float, w: float, out_h: int, out_w: int):
    """Boxes ``[T, 4]`` of a frame cropped to ``(top, left, h, w)`` and resized to ``out_h x out_w``; a box left
    with no area becomes NaN."""
    scale = torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h], dtype=boxes.dtype)
    shift = torch.tensor([left, top, left, top], dtype=boxes.dtype)
    out = (boxes - shift) * scale
    limit = torch.tensor([out_w, out_h, out_w, out_h], dtype=boxes.dtype)
    out = torch.minimum(out.clamp(min=0), limit)
    empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    return out.masked_fill(empty[:, None], float("nan"))


class Resize(ClipTransform):
    """Resize every frame: ``size`` an int resizes the short side (aspect kept), ``(H, W)`` resizes exactly.

    Args:
        size: short side or ``(H, W)``.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``; antialiased when downscaling.
    """

    def __init__(self, size: int | Sequence[int], interpolation: str = "bicubic") -> None:
        self.size = [size] if isinstance(size, int) else list(size)
        self.interpolation = interpolation

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_video(video)
        return TF.resize(video, self.size, interpolation=_INTERPOLATION[self.interpolation], antialias=True)

    def with_boxes(self, video, boxes, generator=None):
        out = self(video)
        h, w = video.shape[-2:]
        return out, _crop_boxes(boxes, 0, 0, h, w, out.shape[-2], out.shape[-1])


class CenterCrop(ClipTransform):
    """Crop the centre ``(H, W)`` (or ``size x size``) of every frame."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = [size, size] if isinstance(size, int) else list(size)

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_video(video)
        return TF.center_crop(video, self.size)

    def with_boxes(self, video, boxes, generator=None):
        h, w = video.shape[-2:]
        top, left = int(round((h - self.size[0]) / 2.0)), int(round((w - self.size[1]) / 2.0))  # torchvision's
        return self(video), _crop_boxes(boxes, top, left, *self.size, *self.size)


class RandomResizedCrop(ClipTransform):
    """One random crop (area fraction in ``scale``, aspect in ``ratio``), resized to ``size``, for the whole clip.

    Parameters follow the Inception-style recipe: up to 10 tries at a random area and log-uniform aspect, then
    the largest centred crop whose aspect is within ``ratio``.

    Args:
        size: output ``(H, W)`` or a square side.
        scale: range of the crop area as a fraction of the frame.
        ratio: range of the crop aspect ``w / h``.
        interpolation: as in :class:`Resize`.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bicubic",
    ) -> None:
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = interpolation

    def get_params(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the crop for a frame of ``height x width``."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(generator, *self.scale)
            aspect = math.exp(_uniform(generator, *log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=generator))
                left = int(torch.randint(0, width - w + 1, (), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._crop(video, generator)[0]

    def with_boxes(self, video, boxes, generator=None):
        out, (top, left, h, w) = self._crop(video, generator)
        return out, _crop_boxes(boxes, top, left, h, w, *self.size)

    def _crop(self, video: torch.Tensor, generator: torch.Generator | None):
        _check_video(video)
        top, left, h, w = self.get_params(video.shape[-2], video.shape[-1], generator)
        out = TF.resized_crop(
            video, top, left, h, w, self.size, interpolation=_INTERPOLATION[self.interpolation], antialias=True
        )
        return out, (top, left, h, w)


class RandomHorizontalFlip(ClipTransform):
    """Flip the whole clip left-right with probability ``p``.

    Not used by default anywhere: a flip turns "moves left" into "moves right" (and mirrors text in frames), so it
    is only safe for data whose captions do not mention left and right.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.with_boxes(video, None, generator)[0]

    def with_boxes(self, video, boxes, generator=None):
        _check_video(video)
        if _uniform(generator) >= self.p:
            return video, boxes
        if boxes is not None:
            boxes = torch.stack(
                [video.shape[-1] - boxes[:, 2], boxes[:, 1], video.shape[-1] - boxes[:, 0], boxes[:, 3]], 1
            )
        return video.flip(-1), boxes


class Normalize(ClipTransform):
    """``(video / 255 - mean) / std`` per channel: uint8 ``[T,3,H,W]`` in, float32 ``[T,3,H,W]`` out.

    Args:
        mean: per-channel mean on the 0..1 scale.
        std: per-channel standard deviation on the 0..1 scale.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @classmethod
    def preset(cls, name: str) -> Normalize:
        if name not in NORMALIZE_PRESETS:
            raise ConfigError(f"normalisation preset: {name!r} is not one of {sorted(NORMALIZE_PRESETS)}")
        return cls(*NORMALIZE_PRESETS[name])

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_video(video)
        # one float copy, then x * (1 / (255 std)) - mean / std in place: two passes and no temporaries, where
        # (x / 255 - mean) / std makes four of each (equal to within float32 rounding)
        unit = 255.0 if video.dtype == torch.uint8 else 1.0
        scale = [1.0 / (unit * s) for s in self.std]
        shift = [m / s for m, s in zip(self.mean, self.std, strict=True)]
        x = video.to(torch.float32, copy=True)
        scale_t = rearrange(torch.tensor(scale, dtype=x.dtype, device=x.device), "c -> 1 c 1 1")
        shift_t = rearrange(torch.tensor(shift, dtype=x.dtype, device=x.device), "c -> 1 c 1 1")
        return x.mul_(scale_t).sub_(shift_t)

    def with_boxes(self, video, boxes, generator=None):
        return self(video), boxes


class Compose(ClipTransform):
    """Apply transforms in order, passing the same ``generator`` to each."""

    def __init__(self, transforms: Sequence[ClipTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        for t in self.transforms:
            video = t(video, generator=generator)
        return video

    def with_boxes(self, video, boxes, generator=None):
        for t in self.transforms:
            video, boxes = t.with_boxes(video, boxes, generator=generator)
        return video, boxes


def build_transform(
    size: int | Sequence[int],
    preset: str = "clip",
    train: bool = False,
    *,
    resize_size: int | None = None,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    interpolation: str = "bicubic",
) -> Compose:
    """The standard pipeline: uint8 ``[T,3,H,W]`` -> float ``[T,3,size,size]``.

    Evaluation: resize the short side to ``resize_size`` (default ``size``), centre-crop ``size``, normalise.
    Training: one random resized crop for the clip, an optional flip, normalise.

    Args:
        size: output side or ``(H, W)``.
        preset: normalisation, one of ``"clip"``, ``"imagenet"``, ``"siglip"``, ``"none"`` (only ``/255``).
        train: random crop (and flip) instead of resize + centre crop.
        resize_size: evaluation short side before cropping (e.g. 256 for a 224 crop).
        scale: training crop area range.
        ratio: training crop aspect range.
        hflip: add a random horizontal flip in training. Off by default because it swaps left and right, which
            captions of motion (the synthetic data's "moves left") depend on.
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    """
    if interpolation not in _INTERPOLATION:
        raise ConfigError(f"interpolation: {interpolation!r} is not one of {sorted(_INTERPOLATION)}")
    steps: list[ClipTransform]
    if train:
        steps = [RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=interpolation)]
        if hflip:
            steps.append(RandomHorizontalFlip())
    else:
        short = resize_size if resize_size is not None else (size if isinstance(size, int) else min(size))
        steps = [Resize(short, interpolation=interpolation), CenterCrop(size)]
    steps.append(Normalize.preset(preset))
    return Compose(steps)
