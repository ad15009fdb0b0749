"""Moving shapes: a deterministic video-text data set written as real H.264 MP4 files and a JSONL manifest.

Each clip shows one shape of one colour and size moving in a straight line over a dark background, captioned
"a big red square moves left". Factors: colour, shape, size and motion direction (:data:`SHAPES_ATTRIBUTES`).
The direction cannot be read from one frame: the shape's position at the middle frame (``F // 2``, the frame a
one-frame uniform sampler picks) is uniform over the same square whatever the direction (so neither the direction
nor its axis shows), and over a random frame the positions of opposite directions differ by at most one frame's
step. Only comparing frames tells the motion.

The image variant writes PNG stills captioned without motion ("a big red square").

Opt-in, so that the default clips stay byte for byte what they were: scenes of one to three shapes with timed events
(``shapes=``, ``events=True``; :mod:`vidvlm.data.synthetic_scenes`) and their ground truth in the manifest, and
conversations and per-type questions for instruction tuning (``conversations=True``; :mod:`vidvlm.data.synthetic_qa`,
which also writes the text-only corpus). A compositional held-out split keeps the colour-shape pairs of
:data:`HELD_OUT_PAIRS` out of training (``compositional=True``) and draws only them (``split="compositional"``).

Colours are fully saturated on a near-black background so that they survive yuv420p chroma subsampling.

Several processes may write the same set at once (training runs started together generate their data on first
use): every file appears whole (written under a temporary name, then renamed), and the manifest, written last, marks
the set complete, so a reader never meets a half-written clip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidvlm.atomic import write_atomic, write_text_atomic
from vidvlm.errors import ConfigError

SHAPES_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": ("red", "green", "blue", "yellow", "magenta", "cyan"),
    "shape": ("square", "circle", "triangle", "cross"),
    "size": ("big", "small"),
    "direction": ("left", "right", "up", "down"),
}

COLORS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (40, 40, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
BACKGROUND_RGB = (16, 16, 16)
# Unit displacement (dx, dy) in image coordinates (y grows downward).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Shape side as a fraction of the frame side, and the total travel over the clip.
_SIZE_FRACTION = {"big": 0.34, "small": 0.2}
_TRAVEL_FRACTION = 0.4
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2, "compositional": 3}
# Colour i with shape i mod 4: one pair per colour, every shape at least once. Training keeps three shapes of every
# colour and four or five colours of every shape, so every word of a held-out caption is seen in training.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "square"),
    ("green", "circle"),
    ("blue", "triangle"),
    ("yellow", "cross"),
    ("magenta", "square"),
    ("cyan", "circle"),
)


@dataclass(frozen=True)
class ShapeClip:
    """The attributes and trajectory of one clip (or still, when ``direction`` is None)."""

    color: str
    shape: str
    size: str
    direction: str | None
    x: np.ndarray  # [F] top-left column of the shape at each frame
    y: np.ndarray  # [F] top-left row

    @property
    def caption(self) -> str:
        text = f"a {self.size} {self.color} {self.shape}"
        return text if self.direction is None else f"{text} moves {self.direction}"

    @property
    def attributes(self) -> dict[str, str]:
        out = {"color": self.color, "shape": self.shape, "size": self.size}
        if self.direction is not None:
            out["direction"] = self.direction
        return out


def shape_mask(shape: str, side: int) -> np.ndarray:
    """A boolean ``[side, side]`` mask of ``shape``."""
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    c = side / 2
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= c**2
    if shape == "triangle":  # apex up, base at the bottom row
        return np.abs(xx - c) <= yy / 2
    if shape == "cross":
        arm = side / 6
        return (np.abs(xx - c) <= arm) | (np.abs(yy - c) <= arm)
    raise ConfigError(f"shape: {shape!r} is not one of {list(SHAPES_ATTRIBUTES['shape'])}")


def sample_clip(rng: np.random.Generator, frames: int, size: int, still: bool = False) -> ShapeClip:
    """Draw the attributes and trajectory of one clip of ``frames`` frames of ``size x size`` pixels.

    The position at frame ``F // 2`` is uniform on ``[reach, size - side - reach]`` on both axes, where ``reach``
    is the largest distance travelled on either side of that frame: every direction shares the same middle-frame
    distribution (also across the motion, so the axis does not show) and the whole trajectory stays in frame.
    """
    pick = {k: str(v[rng.integers(len(v))]) for k, v in SHAPES_ATTRIBUTES.items()}
    side = max(4, round(_SIZE_FRACTION[pick["size"]] * size))
    if still:
        xy = rng.integers(0, size - side + 1, size=2)
        return ShapeClip(pick["color"], pick["shape"], pick["size"], None, xy[:1].copy(), xy[1:].copy())
    step = _TRAVEL_FRACTION * size / max(frames - 1, 1)
    mid = frames // 2
    reach = step * max(mid, frames - 1 - mid)
    centre = rng.uniform(reach, size - side - reach)
    across = round(rng.uniform(reach, size - side - reach))
    t = np.arange(frames) - mid
    dx, dy = DIRECTIONS[pick["direction"]]
    along = np.rint(centre + t * step * (dx + dy)).astype(np.int64)
    x, y = (along, np.full(frames, across)) if dx else (np.full(frames, across), along)
    return ShapeClip(pick["color"], pick["shape"], pick["size"], pick["direction"], x, y)


def render(clip: ShapeClip, size: int) -> np.ndarray:
    """Frames of ``clip``: uint8 ``[F, size, size, 3]`` (RGB)."""
    side = max(4, round(_SIZE_FRACTION[clip.size] * size))
    mask = shape_mask(clip.shape, side)
    frames = np.empty((len(clip.x), size, size, 3), dtype=np.uint8)
    frames[:] = BACKGROUND_RGB
    color = np.array(COLORS_RGB[clip.color], dtype=np.uint8)
    for f, (x, y) in enumerate(zip(clip.x, clip.y, strict=True)):
        frames[f, y : y + side, x : x + side][mask] = color
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """Encode RGB ``[F, H, W, 3]`` uint8 frames as H.264 yuv420p in an MP4 file, one thread (deterministic bytes),
    written whole (a concurrent reader never sees part of it)."""
    write_atomic(path, lambda tmp: _encode_mp4(tmp, frames, fps), durable=False)  # the manifest is the durable one


def _encode_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "ultrafast", "crf": "18", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_png(path: Path, frame: np.ndarray) -> None:
    """Write one RGB ``[H, W, 3]`` uint8 frame as PNG, whole."""
    from PIL import Image

    write_atomic(path, lambda tmp: Image.fromarray(frame).save(tmp, format="PNG"), durable=False)


def allowed_pairs(split: str, compositional: bool) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a split draws from: :data:`HELD_OUT_PAIRS` for ``"compositional"``, the other
    pairs for the other splits with ``compositional=True``, every pair otherwise."""
    every = [(c, s) for c in SHAPES_ATTRIBUTES["color"] for s in SHAPES_ATTRIBUTES["shape"]]
    if split == "compositional":
        return list(HELD_OUT_PAIRS)
    return [p for p in every if p not in HELD_OUT_PAIRS] if compositional else every


def _shape_count(shapes: int | tuple[int, int] | list[int] | None, events: bool) -> tuple[int, int] | None:
    """``shapes`` as an inclusive (min, max) range, or None for the single-shape clips of the default."""
    if shapes is None:
        return (1, 1) if events else None
    low, high = (shapes, shapes) if isinstance(shapes, int) else tuple(shapes) if len(shapes) == 2 else (0, 0)
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 3):
        raise ConfigError(f"shapes: expected a count or a (min, max) range within 1..3, got {shapes!r}")
    return low, high


def make_synthetic(
    out_dir: str | Path,
    num: int,
    seed: int,
    *,
    frames: int = 16,
    size: int = 64,
    images: bool = False,
    split: str = "train",
    fps: int = 8,
    manifest_name: str = "manifest.jsonl",
    shapes: int | tuple[int, int] | list[int] | None = None,
    events: bool = False,
    conversations: bool = False,
    compositional: bool = False,
    qa_per_shape: str | tuple[str, ...] | list[str] = (),
    negatives: bool = False,
    timed_captions: bool = False,
) -> Path:
    """Write ``num`` moving-shape clips (or stills with ``images=True``) and their manifest into ``out_dir``.

    The same arguments give the same files. Splits draw from separate random streams of the same seed, so a train
    and a validation set made with one seed do not share clips.

    Each manifest line is ``{"path": "<split>_00000.mp4", "caption": "...", "attributes": {...}, "label": k}``
    with ``path`` relative to ``out_dir`` and ``label`` the index of the direction in
    ``SHAPES_ATTRIBUTES["direction"]`` (-1 for stills). With ``shapes`` or ``events`` the clips are scenes
    (:func:`vidvlm.data.synthetic_scenes.sample_scene`, a random stream apart from the default clips'), and the row
    adds ``shapes`` (per shape: ``color``, ``shape``, ``size``, ``direction`` and ``motion`` for videos, and
    ``boxes``: per frame ``[x0, y0, x1, y1]`` in pixels, x1 and y1 exclusive, or null while hidden) and, for videos,
    ``events`` (``{"shape": i, "event": ..., "frame": k, "time": k / fps}``, turns add ``direction``);
    ``attributes`` then holds ``count`` and, for one shape, its attributes; ``label`` is -1 unless the clip has one
    shape. ``conversations=True`` adds ``conversation`` (turns ``{"role", "content"}``, the first user turn starting
    with ``<video>`` or ``<image>``) and ``qa`` (``{"question", "answer", "type", "value"}``, one per question type
    the clip answers), drawn from a stream of their own: the clips are those made without it. ``negatives=True``
    adds ``negatives``: hard negative captions that contradict the clip in one detail of motion
    (:meth:`~vidvlm.data.synthetic_scenes.Scene.negatives`; no randomness, so the clips stay those made without it).
    ``timed_captions=True`` writes each event's time into the caption ("... then stops at 3 seconds") and its
    negatives (which then also move each event by 1 and 2 s); only ``caption`` and ``negatives`` change.

    Args:
        out_dir: the folder to write into (created when missing).
        num: number of clips.
        seed: the random seed.
        frames: frames per clip.
        size: frame side in pixels (at least 32).
        images: write PNG stills with motion-free captions instead of videos.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"compositional"`` (only :data:`HELD_OUT_PAIRS`).
        fps: the clips' frame rate.
        manifest_name: the manifest's file name inside ``out_dir``.
        shapes: shapes per scene, a count or an inclusive ``(min, max)`` range within 1..3; None (and no
            ``events``) writes the default single-shape clips.
        events: give each shape a story with a timed event (appears, disappears, starts or stops moving, changes
            direction; videos of at least 4 frames only).
        conversations: add ``conversation`` and ``qa`` to each row.
        compositional: ``"train"``, ``"val"`` and ``"test"`` draw only pairs outside :data:`HELD_OUT_PAIRS`.
        qa_per_shape: with ``conversations``, question types (one or several of ``"color"``, ``"shape"``,
            ``"size"``, ``"direction"``) asked about every shape of a scene instead of one
            (:func:`vidvlm.data.synthetic_qa.scene_qa`); the clips and the other questions stay those made without it.
        negatives: add each row's hard negative captions (videos only).
        timed_captions: captions (and negatives) that say when each event happens (needs ``events``).

    Returns:
        The manifest's path.
    """
    from vidvlm.data.synthetic_qa import conversation, per_shape_types, scene_qa
    from vidvlm.data.synthetic_scenes import check_scene_size, sample_scene, scene_of_clip

    if split not in _SPLIT_STREAM:
        raise ConfigError(f"split: {split!r} is not one of {list(_SPLIT_STREAM)}")
    if num < 1 or frames < 2 or size < 32 or size % 2:
        raise ConfigError(
            f"make_synthetic: need num >= 1, frames >= 2, an even size >= 32; got {num}, {frames}, {size}"
        )
    count = _shape_count(shapes, events)
    per_shape = per_shape_types(qa_per_shape)
    if per_shape and not conversations:
        raise ConfigError("qa_per_shape: needs conversations=True (it shapes the questions)")
    if negatives and images:
        raise ConfigError("negatives: stills have no motion to contradict; use videos")
    if timed_captions and not events:
        raise ConfigError("timed_captions: needs events=True (only timed events have a time to write)")
    if events and (images or frames < 4):
        raise ConfigError(f"events: need videos of at least 4 frames, got images={images}, frames={frames}")
    if count is not None and not images:
        check_scene_size(frames, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream = [seed, _SPLIT_STREAM[split], int(images)]
    rng = np.random.default_rng(stream if count is None else [*stream, 1])
    pairs = allowed_pairs(split, compositional)
    rows = []
    for i in range(num):
        name = f"{split}_{i:05d}.{'png' if images else 'mp4'}"
        if count is None:
            clip = sample_clip(rng, 1 if images else frames, size, still=images)
            while (clip.color, clip.shape) not in pairs:  # only a restricted split redraws
                clip = sample_clip(rng, 1 if images else frames, size, still=images)
            pixels = render(clip, size)
            label = -1 if clip.direction is None else SHAPES_ATTRIBUTES["direction"].index(clip.direction)
            row: dict[str, Any] = {"path": name, "caption": clip.caption, "attributes": clip.attributes, "label": label}
            scene = scene_of_clip(clip, size, fps) if conversations or negatives else None
        else:
            scene = sample_scene(rng, 1 if images else frames, size, fps, count=count, events=events, pairs=pairs)
            pixels = scene.render(size)
            row = {"path": name, "caption": scene.describe(timed_captions), **scene.manifest()}
        if images:
            write_png(out / name, pixels[0])
        else:
            write_mp4(out / name, pixels, fps=fps)
        if scene is not None and negatives:
            row["negatives"] = scene.negatives(timed_captions)
        if scene is not None and conversations:
            talk = np.random.default_rng([*stream, 2, i])
            qa = scene_qa(scene, talk, per_shape)
            row.update(conversation=conversation(scene, qa, talk), qa=qa)
        rows.append(row)
    manifest = out / manifest_name
    write_text_atomic(manifest, "".join(json.dumps(r) + "\n" for r in rows))  # written last, whole
    return manifest


def all_captions(images: bool = False) -> list[str]:
    """Every caption of the default single-shape clips (or stills), in a fixed order (for zero-shot classification)."""
    a = SHAPES_ATTRIBUTES
    base = [f"a {s} {c} {sh}" for s in a["size"] for c in a["color"] for sh in a["shape"]]
    return base if images else [f"{b} moves {d}" for b in base for d in a["direction"]]
