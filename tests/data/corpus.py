"""A tiny test corpus written with PyAV in which every frame shows its own index.

A frame is a 4x3 grid of 16x16-pixel blocks (64x48 display size): the top two rows hold the frame index as 8 binary
digits (white = 1), the bottom row is white, white, black, black, which fixes the orientation (a rotated or mirrored
frame reads back wrong). Big flat blocks survive lossy compression and any downscale.
"""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
from PIL import Image

W, H, BLOCK = 64, 48, 16
_COLS, _ROWS = W // BLOCK, H // BLOCK
_ORIENT = (1, 1, 0, 0)


def pattern(index: int) -> np.ndarray:
    """Returns the display-oriented uint8 [H, W, 3] frame for ``index`` (0..255)."""
    bits = [(index >> b) & 1 for b in range(8)] + list(_ORIENT)
    grid = np.asarray(bits, dtype=np.uint8).reshape(_ROWS, _COLS) * 255
    img = np.kron(grid, np.ones((BLOCK, BLOCK), dtype=np.uint8))
    return np.repeat(img[:, :, None], 3, axis=2)


def read_index(frame: np.ndarray) -> int:
    """Reads the index back from a [3, H, W] or [H, W, 3] frame of any size; -1 when the orientation row is wrong."""
    if frame.shape[0] == 3 and frame.shape[-1] != 3:
        frame = frame.transpose(1, 2, 0)
    h, w = frame.shape[:2]
    grey = frame.astype(np.float32).mean(axis=2)
    bits = []
    for r in range(_ROWS):
        for c in range(_COLS):
            y, x = int((r + 0.5) * h / _ROWS), int((c + 0.5) * w / _COLS)
            bits.append(int(grey[y, x] > 127))
    if tuple(bits[8:]) != _ORIENT:
        return -1
    return sum(b << i for i, b in enumerate(bits[:8]))


def write_video(
    path: str,
    codec: str,
    num_frames: int,
    *,
    rate: int = 25,
    options: dict[str, str] | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    container_options: dict[str, str] | None = None,
    pix_fmt: str = "yuv420p",
    metadata: dict[str, str] | None = None,
) -> str:
    """Writes ``num_frames`` pattern frames; ``pts`` (with ``time_base``) gives irregular timing; ``rotation`` sets the
    display matrix (counter-clockwise degrees) and stores frames turned the other way, so they display upright;
    ``metadata`` are the container's tags."""
    with av.open(path, "w", options=container_options or {}) as out:
        out.metadata.update(metadata or {})
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.pix_fmt = pix_fmt
        stored_h, stored_w = (W, H) if rotation in (90, 270) else (H, W)
        stream.width, stream.height = stored_w, stored_h
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            img = np.ascontiguousarray(np.rot90(pattern(i), k=-(rotation // 90)))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_audio_only(path: str) -> str:
    """Writes one second of a sine tone with no video stream."""
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=16000)
        tone = (0.2 * np.sin(np.arange(1024) / 8.0)).astype(np.float32)[None]
        for i in range(16):
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_gif(path: str, num_frames: int) -> str:
    frames = [Image.fromarray(pattern(i)).convert("P") for i in range(num_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0, disposal=1)
    return path


def build_corpus(root: str) -> dict[str, str]:
    """Writes every test file under ``root``; returns name -> path."""
    os.makedirs(root, exist_ok=True)
    j = lambda name: os.path.join(root, name)  # noqa: E731
    files = {
        # Long GOP (one keyframe every 30 frames, no scene cuts) with 3 B-frames: seeks must land on the right GOP.
        "h264": write_video(
            j("h264.mp4"),
            "libx264",
            75,
            options={
                "g": "30",
                "keyint_min": "30",
                "bf": "3",
                "sc_threshold": "0",
                "preset": "ultrafast",
                "tune": "zerolatency",
                "x264-params": "bframes=3:b-adapt=0:scenecut=0:rc-lookahead=0:sync-lookahead=0",
            },
        ),
        "vp9": write_video(
            j("vp9.webm"),
            "libvpx-vp9",
            40,
            options={"deadline": "realtime", "cpu-used": "8", "g": "16", "lag-in-frames": "0"},
        ),
        "mpeg4": write_video(j("mpeg4.avi"), "mpeg4", 50, options={"g": "12", "bf": "2", "qscale": "3"}),
        "hevc": write_video(
            j("hevc.mkv"),
            "libx265",
            45,
            options={
                "preset": "ultrafast",
                "x265-params": "keyint=20:min-keyint=20:bframes=2:scenecut=0:log-level=error",
            },
        ),
        "vfr": write_video(
            j("vfr.mkv"),
            "libx264",
            40,
            time_base=Fraction(1, 1000),
            options={"g": "10", "bf": "0"},
            pts=[int(t) for t in np.cumsum([0] + [30 + 37 * (i % 3) for i in range(39)])],
        ),
        "rot90": write_video(j("rot90.mp4"), "libx264", 30, rotation=90, options={"g": "10", "bf": "2"}),
        "rot270": write_video(j("rot270.mp4"), "libx264", 20, rotation=270, options={"g": "10", "bf": "0"}),
        "one": write_video(j("one.mp4"), "libx264", 1),
        "gif": write_gif(j("anim.gif"), 12),
    }
    img = Image.fromarray(pattern(0))
    for name, fmt, mode in (
        ("jpg", "JPEG", "RGB"),
        ("png", "PNG", "RGB"),
        ("webp", "WEBP", "RGB"),
        ("bmp", "BMP", "RGB"),
        ("grey", "PNG", "L"),
        ("rgba", "PNG", "RGBA"),
    ):
        ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp"}[fmt]
        files[f"img_{name}"] = j(f"img_{name}.{ext}")
        kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        img.convert(mode).save(files[f"img_{name}"], fmt, **kwargs)
    return files
