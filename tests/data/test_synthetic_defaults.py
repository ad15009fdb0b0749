"""The default moving-shapes output is pinned: the default captioner and earlier runs rely on these exact clips.

The hashes were taken before the generator learnt multi-shape scenes, events, conversations and the compositional
split; every new option is opt-in, so these must never change. The decoded-frame hash also depends on the installed
libx264/FFmpeg (PyAV 18.1): after an upgrade of those, re-derive it from a checkout of the old generator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from vidvlm.data.synthetic import make_synthetic, render, sample_clip
from vidvlm.data.video import open_video

# (keywords, sha256 of the manifest, sha256 of the first file's decoded uint8 [T,3,H,W] frames)
PINNED = [
    (
        {},
        "e65f82faaefaffd64f2fa5b05526d73d1a088f4126451ebeac1a72d7473b920f",
        "2d9a9fecacb8658deaa64eced725e2b74d1af20bbf3eed2436a05ab7661a096c",
    ),
    (
        {"frames": 8, "size": 32, "split": "val", "fps": 4},
        "64f2281c7c2ab133549cc665d69aca714c52ed5852612015a3e2d8ea478461d3",
        "e5120992db634d11e18080e3a432a8ae3ea41c5bfb86ae79c61e9fe41772eae4",
    ),
    (
        {"images": True},
        "f01ac9adec7378dc329edd3a488299995fc25fb1850ed45eb76f196c09518b83",
        "cda6f74243adc01ee2bd8e0b995f9970ccc30b8a762c13c14f49926218228b9b",
    ),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("keywords", "manifest_sha", "frames_sha"), PINNED, ids=["video", "val_small", "images"])
def test_default_output_unchanged(tmp_path: Path, keywords: dict, manifest_sha: str, frames_sha: str) -> None:
    manifest = make_synthetic(tmp_path, 6, 5, **keywords)
    assert sha(manifest.read_bytes()) == manifest_sha
    first = json.loads(manifest.read_text().splitlines()[0])
    assert set(first) == {"path", "caption", "attributes", "label"}
    with open_video(tmp_path / first["path"]) as video:
        frames = video.get_frames(np.arange(video.metadata.num_frames)).numpy()
    assert sha(frames.tobytes()) == frames_sha


def test_default_rendered_pixels_unchanged() -> None:
    """The exact RGB frames before encoding (independent of the codec): the legacy stream ``[seed, split, images]``."""
    rng = np.random.default_rng([5, 0, 0])
    pixels = b"".join(render(sample_clip(rng, 16, 64), 64).tobytes() for _ in range(6))
    assert sha(pixels) == "8081947f8650a005f4086ace65fc7e654e5fee4c171c1ef07c201eadcd5e214b"
