"""Still images (JPEG, PNG, WebP, BMP, ...) as one-frame videos, decoded with Pillow."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vidvlm.errors import VideoDecodeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

# EXIF orientation tag -> counter-clockwise display rotation (mirrored orientations report their rotation part).
_EXIF_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 270, 7: 270, 8: 90}


def probe_image(path: str) -> tuple[int, int, int]:
    """Returns (display width, display height, rotation) of the image at ``path``; decodes it once to validate it."""
    try:
        with Image.open(path) as img:
            rotation = _EXIF_ROTATION.get(img.getexif().get(0x0112, 1), 0)
            width, height = img.size
            img.load()  # decode now, so that a truncated or corrupt image fails at open rather than in a worker
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, RuntimeError) as err:
        raise VideoDecodeError(f"{path}: not a readable image ({err})") from err
    if rotation in (90, 270):
        width, height = height, width
    return width, height, rotation


def load_image(path: str, out_hw: tuple[int, int] | None) -> np.ndarray:
    """Decodes the image at ``path`` to RGB (grey and alpha dropped to RGB) in display orientation.

    Returns:
        uint8 [H, W, 3], resized to ``out_hw`` = (H, W) when given.
    """
    try:
        with Image.open(path) as img:
            if out_hw is not None and img.format == "JPEG":
                img.draft("RGB", (out_hw[1], out_hw[0]))  # DCT-domain downscale: cheaper than decoding full size
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
            if out_hw is not None and img.size != (out_hw[1], out_hw[0]):
                img = img.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR)
            return np.array(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, RuntimeError) as err:
        raise VideoDecodeError(f"{path}: image does not decode ({err})") from err
