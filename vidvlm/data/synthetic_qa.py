"""Questions, answers and conversations about moving-shapes scenes, and text-only sentences about the same world.

Every answer is read off the scene's ground truth (:class:`~vidvlm.data.synthetic_scenes.Scene`). Question types
(:data:`QUESTION_TYPES`; a still gets only those that need no motion, :data:`STILL_TYPES`)::

    color      "what colour is the square?"                         "red"
    shape      "which shape is red?"                                "square"
    size       "is the red square big or small?"                    "big"
    direction  "which way does the red square move?"                "left" (a turn: "left then up")
    count      "how many shapes are there?"                         "2"    (every shape that is drawn at some frame)
    when       "when does the red square start moving?"             "at 1.5 seconds"
    after      "what happens after the red square stops moving?"    "the blue circle appears" (the next event)
               "what does the red square do after moving left?"     "it moves up" (the rest of its story)

A shape is named so that the name fits one shape of the scene: shapes of a scene differ in colour and in kind, so
"the square" and "the red one" are enough. Several phrasings of each question and of the caption request are drawn
from the generator passed in, so one seed gives the same questions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vidvlm.atomic import write_text_atomic
from vidvlm.data.synthetic import SHAPES_ATTRIBUTES, allowed_pairs
from vidvlm.data.synthetic_scenes import EVENT_OF_STORY, STORIES, Scene, Track, clause, pick_shapes, seconds
from vidvlm.errors import ConfigError

QUESTION_TYPES = ("color", "shape", "size", "direction", "count", "when", "after")
STILL_TYPES = ("color", "shape", "size", "count")

_CAPTION_PROMPTS = {
    "video": (
        "describe the video.",
        "what happens in the video?",
        "write a short caption for this video.",
        "what do you see?",
        "describe the clip in one sentence.",
    ),
    "image": (
        "describe the image.",
        "what is in the picture?",
        "write a short caption for this image.",
        "what do you see?",
    ),
}
_QUESTIONS = {
    "color": ("what colour is the {kind}?", "what color is the {kind}?", "which colour does the {kind} have?"),
    "shape": ("what shape is the {color} one?", "which shape is {color}?", "what kind of shape is the {color} shape?"),
    "size": (
        "is the {color} {kind} big or small?",
        "what size is the {color} {kind}?",
        "how big is the {color} {kind}?",
    ),
    "direction": (
        "which way does the {ref} move?",
        "in which direction does the {ref} move?",
        "where is the {ref} going?",
        "does the {ref} move left, right, up or down?",
    ),
    "count": ("how many shapes are there?", "how many shapes are in the {medium}?", "count the shapes."),
    "when": (
        "when does the {ref} {verb}?",
        "at what time does the {ref} {verb}?",
        "how many seconds into the video does the {ref} {verb}?",
    ),
    "after_event": ("what happens after the {ref} {event}?", "what happens next, after the {ref} {event}?"),
}
# Infinitives of each event, for "when does the ... <verb>?".
_VERBS = {
    "starts": ("start moving",),
    "stops": ("stop moving", "stop"),
    "turns": ("change direction", "turn"),
    "appears": ("appear",),
    "disappears": ("disappear",),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _ref(track: Track, rng: np.random.Generator) -> str:
    """A name of ``track`` without its size: "red square" (or, at random, "big red square")."""
    return _pick(rng, (f"{track.color} {track.shape}", track.name))


def _motion_answer(track: Track) -> str:
    return " then ".join(track.directions)


def _after_same_track(track: Track, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer) about what one shape does after the first part of its story."""
    ref = f"{track.color} {track.shape}"
    d = track.directions
    before = "resting" if track.story == "starts" else "it appears" if track.story == "appears" else f"moving {d[0]}"
    answer = {
        "starts": f"it moves {d[0]}",
        "stops": "it stops",
        "turns": f"it moves {d[-1]}",
        "appears": f"it moves {d[0]}",
        "disappears": "it disappears",
    }[track.story]
    template = _pick(rng, ("what does the {ref} do after {before}?", "after {before}, what does the {ref} do?"))
    return template.format(ref=ref, before=before), answer


def _after_event(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    """(question, answer) about the next event of the scene, when an event is followed by exactly one next event."""
    events = scene.events()  # in time order
    frames = [e["frame"] for e in events]
    # consecutive events at distinct frames, neither sharing its frame with another event
    options = [
        (a, b)
        for a, b in zip(events, events[1:], strict=False)
        if a["frame"] < b["frame"] and frames.count(a["frame"]) == 1 and frames.count(b["frame"]) == 1
    ]
    if not options:
        return None
    first, then = _pick(rng, options)
    a, b = scene.tracks[first["shape"]], scene.tracks[then["shape"]]
    question = _pick(rng, _QUESTIONS["after_event"]).format(ref=f"{a.color} {a.shape}", event=first["event"])
    return question, f"the {b.color} {b.shape} {then['event']}"


PER_SHAPE_TYPES = ("color", "shape", "size", "direction")


def per_shape_types(types: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``types`` (one name or several) as a tuple, each checked against :data:`PER_SHAPE_TYPES`.

    Raises:
        ConfigError: naming ``qa_per_shape`` and the unknown types.
    """
    chosen = (types,) if isinstance(types, str) else tuple(types)
    unknown = sorted(set(chosen) - set(PER_SHAPE_TYPES))
    if unknown:
        raise ConfigError(f"qa_per_shape: {unknown} not among {list(PER_SHAPE_TYPES)}")
    return chosen


def scene_qa(
    scene: Scene, rng: np.random.Generator, per_shape: str | tuple[str, ...] | list[str] = ()
) -> list[dict[str, Any]]:
    """One question of each type that the scene can answer, about a random shape.

    Args:
        scene: the scene's ground truth.
        rng: draws the shapes asked about and the phrasings.
        per_shape: types of :data:`PER_SHAPE_TYPES` asked about every shape of the scene instead of one: each other
            shape's question follows the first of its type. The first questions are those made without it (the
            extra ones are drawn afterwards), so a scene of one shape gets the same list.

    Returns:
        ``[{"question": ..., "answer": ..., "type": ..., "value": ...}]`` in :data:`QUESTION_TYPES` order;
        ``value`` is the answer as data (a colour, a count as int, a time in seconds as float, ...).
    """
    per_shape = per_shape_types(per_shape)
    asked: dict[str, Track] = {}  # the shape each type's first question is about
    out = _one_of_each(scene, rng, asked)
    for kind in (k for k in QUESTION_TYPES if k in per_shape and k in asked):
        first = next(i for i, q in enumerate(out) if q["type"] == kind)
        extra = [_about(kind, t, scene, rng) for t in scene.tracks if t is not asked[kind]]
        out[first + 1 : first + 1] = extra
    return out


def _about(kind: str, t: Track, scene: Scene, rng: np.random.Generator) -> dict[str, Any]:
    """The question of type ``kind`` (one of :data:`PER_SHAPE_TYPES`) about shape ``t``."""
    if kind == "color":
        name = "shape" if len(scene.tracks) == 1 and rng.integers(2) else t.shape
        question, answer = _pick(rng, _QUESTIONS["color"]).format(kind=name), t.color
    elif kind == "shape":
        question, answer = _pick(rng, _QUESTIONS["shape"]).format(color=t.color), t.shape
    elif kind == "size":
        question, answer = _pick(rng, _QUESTIONS["size"]).format(color=t.color, kind=t.shape), t.size
    else:
        answer = _motion_answer(t)
        question = _pick(rng, _QUESTIONS["direction"]).format(ref=_ref(t, rng))
    return {"question": question, "answer": answer, "type": kind, "value": answer}


def _one_of_each(scene: Scene, rng: np.random.Generator, asked: dict[str, Track]) -> list[dict[str, Any]]:
    """:func:`scene_qa` without ``per_shape``; ``asked`` gets the shape each attribute question is about."""
    tracks = scene.tracks
    still = scene.num_frames == 1
    medium = "image" if still else "video"
    out = []

    def add(kind: str, question: str, answer: str, value: Any) -> None:
        out.append({"question": question, "answer": answer, "type": kind, "value": value})

    for kind in ("color", "shape", "size") + (() if still else ("direction",)):
        asked[kind] = t = _pick(rng, tracks)
        out.append(_about(kind, t, scene, rng))
    n = len(tracks)
    add("count", _pick(rng, _QUESTIONS["count"]).format(medium=medium), str(n), n)
    timed = [t for t in tracks if t.event_frame is not None]
    if timed:
        t = _pick(rng, timed)
        time = t.event_frame / scene.fps
        question = _pick(rng, _QUESTIONS["when"]).format(ref=_ref(t, rng), verb=_pick(rng, _VERBS[t.story]))
        add("when", question, seconds(time), time)
        across = _after_event(scene, rng) if rng.integers(2) else None
        question, answer = across or _after_same_track(_pick(rng, timed), rng)
        add("after", question, answer, answer)
    return out


def conversation(scene: Scene, qa: list[dict[str, Any]], rng: np.random.Generator) -> list[dict[str, str]]:
    """A single- or multi-turn conversation from the caption and ``qa``; the first user turn starts with the
    placeholder (``<video>`` or, for a still, ``<image>``) and a newline.

    Returns:
        ``[{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]``.
    """
    medium = "image" if scene.num_frames == 1 else "video"
    pool = [(_pick(rng, _CAPTION_PROMPTS[medium]), scene.caption)] + [(q["question"], q["answer"]) for q in qa]
    turns = 1 if rng.integers(2) else int(rng.integers(2, min(4, len(pool)) + 1))
    turns_out = []
    for i, k in enumerate(rng.choice(len(pool), size=turns, replace=False)):
        question, answer = pool[int(k)]
        content = f"<{medium}>\n{question}" if i == 0 else question
        turns_out += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return turns_out


# ---------------------------------------------------------------------------------------------------- text only
_PLURAL = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
_EDGE = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_SHAPE_FACTS = (
    "a square has four equal sides and four corners",
    "a triangle has three sides and three corners",
    "a circle is round and has no corners",
    "a cross is made of two bars that cross in the middle",
    "squares, circles, triangles and crosses are shapes",
    "red, green, blue, yellow, magenta and cyan are colours",
    "a shape that does not move stays in the same place",
    "a shape that appears was not there before",
    "a shape that disappears is not there afterwards",
)


def _text_row(rng: np.random.Generator, pairs: list[tuple[str, str]]) -> str:
    """One sentence (or a short question and answer) about the world, with no video."""
    a = SHAPES_ATTRIBUTES
    kind = int(rng.integers(8))
    if kind == 0:
        (c1, s1), (c2, s2) = (pairs[int(k)] for k in rng.choice(len(pairs), size=2, replace=False))
        return f"{c1} {_PLURAL[s1]} and {c2} {_PLURAL[s2]} are shapes"
    if kind == 1:
        return _pick(rng, _SHAPE_FACTS)
    if kind == 2:
        d = _pick(rng, a["direction"])
        return _pick(
            rng,
            (
                f"a shape that moves {d} goes toward the {_EDGE[d]} edge",
                f"{d} is the opposite of {_OPPOSITE[d]}",
                f"a shape that moves {d} and then {_OPPOSITE[d]} comes back",
            ),
        )
    if kind == 3:
        s = _pick(rng, a["shape"])
        return _pick(rng, (f"a big {s} is larger than a small {s}", f"a small {s} is smaller than a big {s}"))
    if kind == 4:
        fps = int(_pick(rng, (4, 8, 10)))
        k = int(rng.integers(1, 3 * fps))
        return f"at {fps} frames per second, frame {k} is shown {seconds(k / fps)}"
    # A scene told in words: its caption, its events with their times, and a question about it with the answer.
    n = int(rng.integers(1, 4))
    chosen = pick_shapes(rng, n, pairs)
    parts, timed = [], []
    for color, shape in chosen:
        size, story, d = _pick(rng, a["size"]), _pick(rng, STORIES), _pick(rng, a["direction"])
        dirs = (d, _pick(rng, ("up", "down") if d in ("left", "right") else ("left", "right")))
        parts.append(clause(f"{size} {color} {shape}", story, dirs))
        if story in EVENT_OF_STORY:
            timed.append((f"{color} {shape}", story, float(rng.integers(1, 13)) / 4))
    caption = " and ".join(parts)
    if kind == 5:
        return caption
    if kind == 6 or not timed:
        color, shape = _pick(rng, chosen)
        question, answer = _pick(rng, ((f"what colour is the {shape}?", color), ("how many shapes are there?", str(n))))
        return f"{caption}. question: {question} answer: {answer}"
    name, story, time = _pick(rng, timed)
    told = ". ".join(f"the {nm} {EVENT_OF_STORY[st]} {seconds(t)}" for nm, st, t in sorted(timed, key=lambda e: e[2]))
    question = f"when does the {name} {_VERBS[story][0]}?"
    return f"{caption}. {told}. question: {question} answer: {seconds(time)}"


def make_text_corpus(
    out_dir: str | Path,
    num: int,
    seed: int,
    *,
    compositional: bool = False,
    file_name: str = "text.jsonl",
) -> Path:
    """Write ``num`` text-only rows ``{"text": ...}`` about the moving-shapes world (no video) as JSONL.

    Sentences name shapes and colours, say what directions and sizes mean, tell scenes in words with their event
    times and ask and answer questions about them, for the language side of a pre-training mixture. The same
    ``(num, seed, compositional)`` gives the same file.

    Args:
        out_dir: the folder to write into (created when missing).
        num: number of rows.
        seed: the random seed.
        compositional: name only the training colour-shape pairs (never :data:`~vidvlm.data.synthetic.HELD_OUT_PAIRS`),
            for experiments that test on the compositional split.
        file_name: the JSONL file's name inside ``out_dir``.

    Returns:
        The JSONL file's path.
    """
    if num < 1:
        raise ConfigError(f"make_text_corpus: num must be at least 1, got {num}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4, int(compositional)])
    pairs = allowed_pairs("train", compositional)
    path = out / file_name
    write_text_atomic(path, "".join(json.dumps({"text": _text_row(rng, pairs)}) + "\n" for _ in range(num)))
    return path
