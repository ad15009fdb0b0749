"""Scenes of the moving-shapes world: one to three shapes, each with a motion story and at most one timed event.

A :class:`Scene` holds one :class:`Track` per shape: its attributes, its top-left position and visibility at every
frame, and its story (:data:`STORIES`)::

    moves        moves in one direction for the whole clip          "a big red square moves left"
    starts       rests, then moves from event frame k                "a big red square starts moving left"
    stops        moves, then rests from event frame k                "a big red square moves left then stops"
    turns        moves one way, then a perpendicular way from k      "a big red square moves left then up"
    appears      hidden before frame k, then moves                   "a big red square appears then moves left"
    disappears   moves, hidden from frame k on                       "a big red square moves left then disappears"
    still        a still image (one frame)                           "a big red square"

Event times are exact: the event of frame ``k`` happens at ``k / fps`` seconds, the presentation time of frame ``k``.
A timed caption (:meth:`Scene.describe` with ``timed=True``) writes them after the event word: "a big red square
moves left then stops at 3 seconds".
The velocity between frames ``f`` and ``f + 1`` is ``step`` pixels (an integer, at least 1) or 0, so a shape that
starts moving at ``t`` has one position at every frame up to ``t`` and a new position at every later frame; one that
stops at ``t`` changed position at every frame up to ``t`` and keeps the position of ``t`` afterwards; one that
appears at ``t`` is first drawn at ``t``; one that disappears at ``t`` is last drawn one frame before ``t``.

Shapes of one scene have different colours and different kinds (so "the red one" and "the square" name one shape
each) and never overlap in a frame where both are drawn (one pixel apart at least). The whole path stays in the frame.

As in the single-shape clips, the middle frame (``F // 2``) should not tell the motion: a shape's position there is
drawn uniformly from the same square whatever its story and direction, among the positions that keep it apart from
the shapes placed before it. With one shape that is exact. With several, keeping apart leaves a small dependence:
over 3000 scenes of 1-3 shapes (64 px, 16 frames) the mean middle-frame column of big left-movers and right-movers
differed by 1.4 px, against a spread of 27 px. Several big shapes often do not fit together; their sizes are then
redrawn, so a three-shape scene holds 0/1/2/3 big shapes about 14/41/35/10 % of the time (12.5/37.5/37.5/12.5 %
when drawn independently). Small frames with many frames per clip (32 px, 16 frames) are crowded: use <= 8 frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from vidvlm.data.synthetic import (
    _SIZE_FRACTION,
    BACKGROUND_RGB,
    COLORS_RGB,
    DIRECTIONS,
    SHAPES_ATTRIBUTES,
    ShapeClip,
    shape_mask,
)
from vidvlm.errors import ConfigError

STORIES = ("moves", "starts", "stops", "turns", "appears", "disappears")
# Event name of each story with an event (the manifest's ``events[i]["event"]``).
EVENT_OF_STORY = {
    "starts": "starts moving",
    "stops": "stops moving",
    "turns": "changes direction",
    "appears": "appears",
    "disappears": "disappears",
}
# Travel over a whole clip as a fraction of the frame side (the single-shape clips use 0.4; several shapes need room).
_TRAVEL_FRACTION = 0.25
_SCENE_TRIES = 20
_MOTION_TRIES = 20


def seconds(t: float) -> str:
    """ "at 1.5 seconds", "at 1 second" (at most three decimals, no trailing zeros)."""
    text = f"{t:.3f}".rstrip("0").rstrip(".")
    return f"at {text} second{'' if text == '1' else 's'}"


def clause(name: str, story: str, directions: Sequence[str], time: float | None = None) -> str:
    """A caption clause: ``clause("big red square", "turns", ("left", "up"))`` is "a big red square moves left then
    up". With the event's ``time`` in seconds (a timed caption) the time follows the event word: "a big red square
    moves left then up at 3 seconds", "a big red square appears at 2.5 seconds then moves left"."""
    a, d = f"a {name}", directions
    at = "" if time is None or story not in EVENT_OF_STORY else f" {seconds(time)}"
    return {
        "still": lambda: a,
        "moves": lambda: f"{a} moves {d[0]}",
        "starts": lambda: f"{a} starts moving {d[0]}{at}",
        "stops": lambda: f"{a} moves {d[0]} then stops{at}",
        "turns": lambda: f"{a} moves {d[0]} then {d[1]}{at}",
        "appears": lambda: f"{a} appears{at} then moves {d[0]}",
        "disappears": lambda: f"{a} moves {d[0]} then disappears{at}",
    }[story]()


def event_frames(frames: int) -> tuple[int, int]:
    """The inclusive range of frames an event is drawn at in a clip of ``frames`` frames: its middle half, so that
    every event has motion (or visibility) on both sides."""
    return max(1, frames // 4), min(frames - 2, frames - 1 - frames // 4)


def shape_side(size: str, frame_size: int) -> int:
    """The side in pixels of a ``size`` ("big" or "small") shape in a ``frame_size`` frame."""
    return max(4, round(_SIZE_FRACTION[size] * frame_size))


@cache
def _mask_extent(shape: str, side: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the mask's pixels inside its ``side x side`` cell (x1, y1 exclusive)."""
    mask = shape_mask(shape, side)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass(frozen=True)
class Track:
    """One shape of a scene: attributes, story and per-frame position (top-left of its cell) and visibility."""

    color: str
    shape: str
    size: str
    side: int
    story: str
    directions: tuple[str, ...]  # () for a still, two for "turns", else one
    event_frame: int | None
    x: np.ndarray  # [F] int, top-left column of the shape's cell
    y: np.ndarray  # [F] int, top-left row
    visible: np.ndarray  # [F] bool

    @property
    def name(self) -> str:
        """ "big red square"."""
        return f"{self.size} {self.color} {self.shape}"

    @property
    def caption(self) -> str:
        """The track's clause of a caption (see the module docstring)."""
        return clause(self.name, self.story, self.directions)

    def boxes(self) -> list[list[int] | None]:
        """Per frame, the tight box ``[x0, y0, x1, y1]`` of the drawn pixels (x1, y1 exclusive), or None when hidden."""
        ex0, ey0, ex1, ey1 = _mask_extent(self.shape, self.side)
        return [
            [int(x) + ex0, int(y) + ey0, int(x) + ex1, int(y) + ey1] if v else None
            for x, y, v in zip(self.x, self.y, self.visible, strict=True)
        ]

    def manifest(self) -> dict[str, Any]:
        """The manifest's entry for this shape: attributes, ``motion`` (the story), ``direction`` and ``boxes``."""
        out: dict[str, Any] = {"color": self.color, "shape": self.shape, "size": self.size}
        if self.story != "still":
            out.update(direction=self.directions[0], motion=self.story)
        out["boxes"] = self.boxes()
        return out


@dataclass(frozen=True)
class Scene:
    """The tracks of one clip (or still) of ``num_frames`` frames at ``fps``."""

    tracks: tuple[Track, ...]
    num_frames: int
    fps: float

    @property
    def caption(self) -> str:
        """The tracks' clauses joined by "and": "a big red square moves left and a small blue circle moves up"."""
        return self.describe()

    def describe(self, timed: bool = False) -> str:
        """The caption; ``timed`` writes each event's time after its event word (see :func:`clause`)."""
        return " and ".join(self._clause(t, t.story, t.directions, t.event_frame, timed) for t in self.tracks)

    def _clause(self, t: Track, story: str, directions: Sequence[str], frame: int | None, timed: bool) -> str:
        return clause(t.name, story, directions, None if not timed or frame is None else frame / self.fps)

    def negatives(self, timed: bool = False) -> list[str]:
        """Hard negative captions: captions of this scene with one detail of motion changed, so none describes it.

        Per moving shape: its direction replaced by each other one (a turn instead has its first or its second
        direction reversed, or the two in the other order); its event moved to the other end of the motion (starts
        and stops, appears and disappears, exchanged); and per two shapes with different first directions, those
        directions exchanged (each shape's own motion then belongs to the other). Turns stay perpendicular. With
        ``timed`` (negatives of :meth:`describe` ``(timed=True)``) every clause carries its event's time, and each
        event also appears 1 s and 2 s earlier and later, where that is still a frame events are drawn at
        (:func:`event_frames`): off by more than the 0.5 s a "when" answer may miss by. In a fixed order, without
        repeats or the caption itself; a still has none.
        """
        names = SHAPES_ATTRIBUTES["direction"]
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
        other_end = {"starts": "stops", "stops": "starts", "appears": "disappears", "disappears": "appears"}
        lo, hi = event_frames(self.num_frames)

        def variant(changes: dict[int, tuple[str, tuple[str, ...], int | None]]) -> str:
            return " and ".join(
                self._clause(t, *changes.get(i, (t.story, t.directions, t.event_frame)), timed)
                for i, t in enumerate(self.tracks)
            )

        out: list[str] = []
        for i, t in enumerate(self.tracks):
            if not t.directions:
                continue
            if t.story == "turns":
                d0, d1 = t.directions
                options = [(opposite[d0], d1), (d0, opposite[d1]), (d1, d0)]
            else:
                options = [(d,) for d in names if d != t.directions[0]]
            out += [variant({i: (t.story, d, t.event_frame)}) for d in options]
            if t.story in other_end:
                out.append(variant({i: (other_end[t.story], t.directions, t.event_frame)}))
            if timed and t.event_frame is not None:
                shifts = [round(s * self.fps) for s in (-2, -1, 1, 2)]
                frames = [t.event_frame + s for s in shifts if s and lo <= t.event_frame + s <= hi]
                out += [variant({i: (t.story, t.directions, k)}) for k in frames]
        for i, a in enumerate(self.tracks):
            for j in range(i + 1, len(self.tracks)):
                b = self.tracks[j]
                if not a.directions or not b.directions or a.directions[0] == b.directions[0]:
                    continue
                da, db = (b.directions[0], *a.directions[1:]), (a.directions[0], *b.directions[1:])
                if any(len(d) == 2 and bool(DIRECTIONS[d[0]][0]) == bool(DIRECTIONS[d[1]][0]) for d in (da, db)):
                    continue  # a turn would no longer be perpendicular
                out.append(variant({i: (a.story, da, a.event_frame), j: (b.story, db, b.event_frame)}))
        caption = self.describe(timed)
        return [c for c in dict.fromkeys(out) if c != caption]

    def events(self) -> list[dict[str, Any]]:
        """Timed events in order: ``{"shape": i, "event": ..., "frame": k, "time": k / fps}`` (turns add the new
        ``direction``)."""
        out = []
        for i, t in enumerate(self.tracks):
            if t.event_frame is None:
                continue
            event = {"shape": i, "event": EVENT_OF_STORY[t.story], "frame": t.event_frame}
            event["time"] = t.event_frame / self.fps
            if t.story == "turns":
                event["direction"] = t.directions[1]
            out.append(event)
        return sorted(out, key=lambda e: (e["frame"], e["shape"]))

    def manifest(self) -> dict[str, Any]:
        """The manifest fields of the scene: ``attributes``, ``label``, ``shapes`` and, for a video, ``events``."""
        attributes: dict[str, Any] = {}
        label = -1
        if len(self.tracks) == 1:
            t = self.tracks[0]
            attributes = {"color": t.color, "shape": t.shape, "size": t.size}
            if t.directions:
                attributes["direction"] = t.directions[0]
                label = SHAPES_ATTRIBUTES["direction"].index(t.directions[0])
        attributes["count"] = len(self.tracks)
        out = {"attributes": attributes, "label": label, "shapes": [t.manifest() for t in self.tracks]}
        if self.num_frames > 1:
            out["events"] = self.events()
        return out

    def render(self, size: int) -> np.ndarray:
        """Frames of the scene: uint8 ``[F, size, size, 3]`` (RGB); later tracks are drawn over earlier ones."""
        frames = np.empty((self.num_frames, size, size, 3), dtype=np.uint8)
        frames[:] = BACKGROUND_RGB
        for t in self.tracks:
            mask = shape_mask(t.shape, t.side)
            color = np.array(COLORS_RGB[t.color], dtype=np.uint8)
            for f in np.flatnonzero(t.visible):
                x, y = int(t.x[f]), int(t.y[f])
                frames[f, y : y + t.side, x : x + t.side][mask] = color
        return frames


def scene_of_clip(clip: ShapeClip, size: int, fps: float) -> Scene:
    """The one-track scene of a default single-shape clip (or still), for its questions and conversations."""
    story, directions = ("still", ()) if clip.direction is None else ("moves", (clip.direction,))
    x, y = np.asarray(clip.x, dtype=np.int64), np.asarray(clip.y, dtype=np.int64)
    visible = np.ones(len(x), dtype=bool)
    side = shape_side(clip.size, size)
    return Scene((Track(clip.color, clip.shape, clip.size, side, story, directions, None, x, y, visible),), len(x), fps)


def motion_step(frames: int, size: int) -> tuple[int, int]:
    """(step, reach): pixels per frame while moving, and the largest distance from the middle frame's position."""
    step = max(1, round(_TRAVEL_FRACTION * size / max(frames - 1, 1)))
    return step, step * max(frames // 2, frames - 1 - frames // 2)


def check_scene_size(frames: int, size: int) -> None:
    """Raise :class:`ConfigError` when a big shape's whole path cannot fit in the frame."""
    _, reach = motion_step(frames, size)
    if size - shape_side("big", size) - 2 * reach < 0:
        raise ConfigError(f"make_synthetic: frames={frames} is too many for size={size} in scenes; use fewer frames")


def pick_shapes(rng: np.random.Generator, n: int, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``n`` (colour, shape) pairs from ``pairs`` with distinct colours and distinct shapes."""
    chosen: list[tuple[str, str]] = []
    for k in rng.permutation(len(pairs)):
        color, shape = pairs[k]
        if all(color != c and shape != s for c, s in chosen):
            chosen.append((color, shape))
            if len(chosen) == n:
                return chosen
    raise AssertionError(f"no {n} pairs with distinct colours and shapes in {pairs}")


def story_path(
    story: str, directions: tuple[str, ...], k: int | None, frames: int, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """A track's path as its story makes it: int ``[F, 2]`` (dx, dy) of each frame's position from the middle
    frame's, and bool ``[F]`` visibility (an event at frame ``k``; ``step`` pixels per moving frame)."""
    velocity = np.zeros((max(frames - 1, 0), 2), dtype=np.int64)  # between frame f and f + 1
    visible = np.ones(frames, dtype=bool)
    if story != "still":
        velocity[:] = DIRECTIONS[directions[0]]
    if story == "starts":
        velocity[:k] = 0
    elif story == "stops":
        velocity[k:] = 0
    elif story == "turns":
        velocity[k:] = DIRECTIONS[directions[1]]
    elif story == "appears":
        visible[:k] = False
    elif story == "disappears":
        visible[k:] = False
    position = np.concatenate([np.zeros((1, 2), dtype=np.int64), np.cumsum(velocity * step, axis=0)])
    return position - position[frames // 2], visible


def _free_positions(
    candidates: np.ndarray, offsets: np.ndarray, side: int, visible: np.ndarray, placed: list[Track]
) -> np.ndarray:
    """bool ``[C]``: which middle-frame positions ``candidates`` ``[C, 2]`` keep a shape of ``side`` with these
    ``offsets`` ``[F, 2]`` at least one pixel from every ``placed`` track in each frame where both are drawn."""
    free = np.ones(len(candidates), dtype=bool)
    for other in placed:
        both = visible & other.visible  # [F]
        apart = np.zeros((len(candidates), len(both)), dtype=bool)
        for axis, theirs in enumerate((other.x, other.y)):
            delta = candidates[:, axis, None] + offsets[None, :, axis] - theirs[None, :]  # [C, F] ours - theirs
            apart |= (delta + side < 0) | (other.side < delta)
        free &= ~(both[None, :] & ~apart).any(axis=1)
    return free


def sample_scene(
    rng: np.random.Generator,
    frames: int,
    size: int,
    fps: float,
    *,
    count: tuple[int, int] = (1, 3),
    events: bool = False,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> Scene:
    """Draw a scene of ``count[0]`` to ``count[1]`` shapes (a still when ``frames == 1``).

    Args:
        rng: the random generator (the only source of randomness).
        frames: frames per clip; 1 draws a still.
        size: frame side in pixels.
        fps: frame rate (event times are ``frame / fps``).
        count: the inclusive range of the number of shapes (at most 3).
        events: draw each shape's story uniformly from :data:`STORIES`; otherwise every shape ``moves``.
        pairs: the (colour, shape) pairs to draw from (default: all).

    Returns:
        The scene; its shapes never overlap in a frame where both are drawn.
    """
    if pairs is None:
        pairs = [(c, s) for c in SHAPES_ATTRIBUTES["color"] for s in SHAPES_ATTRIBUTES["shape"]]
    step, reach = motion_step(frames, size)
    if frames == 1:
        reach = 0
    lo, hi = event_frames(frames)
    menu = ("still",) if frames == 1 else STORIES if events else ("moves",)
    n = int(rng.integers(count[0], count[1] + 1))
    for _ in range(_SCENE_TRIES):  # sizes are redrawn only when no motion fits them (several big shapes may not)
        looks = [(c, s, str(SHAPES_ATTRIBUTES["size"][rng.integers(2)])) for c, s in pick_shapes(rng, n, pairs)]
        for _ in range(_MOTION_TRIES):
            tracks: list[Track] = []
            for color, shape, size_name in looks:
                story = str(menu[rng.integers(len(menu))])
                directions: tuple[str, ...] = ()
                if story != "still":
                    first = str(SHAPES_ATTRIBUTES["direction"][rng.integers(4)])
                    directions = (first,)
                    if story == "turns":  # perpendicular, so the path stays within reach of the middle frame
                        across = ("up", "down") if DIRECTIONS[first][0] else ("left", "right")
                        directions += (across[rng.integers(2)],)
                k = int(rng.integers(lo, hi + 1)) if story in EVENT_OF_STORY else None
                side = shape_side(size_name, size)
                axis = np.arange(reach, size - side - reach + 1)
                candidates = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
                offsets, visible = story_path(story, directions, k, frames, step)
                free = np.flatnonzero(_free_positions(candidates, offsets, side, visible, tracks))
                if not len(free):
                    break
                xy = offsets + candidates[free[rng.integers(len(free))]]
                tracks.append(Track(color, shape, size_name, side, story, directions, k, xy[:, 0], xy[:, 1], visible))
            else:
                return Scene(tuple(tracks), frames, fps)
    raise ConfigError(f"make_synthetic: cannot place {n} shapes apart in {size}x{size} frames; use a larger size")
