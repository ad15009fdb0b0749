"""Multi-shape scenes with timed events: the manifest's ground truth (boxes, events, captions) matches the pixels."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vidvlm.data.synthetic import COLORS_RGB, DIRECTIONS, SHAPES_ATTRIBUTES, make_synthetic
from vidvlm.data.synthetic_scenes import EVENT_OF_STORY, STORIES, clause, event_frames, sample_scene, shape_side
from vidvlm.data.video import open_video
from vidvlm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FRAMES, SIZE, FPS = 8, 48, 4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    return make_synthetic(out, 12, seed=3, frames=FRAMES, size=SIZE, fps=FPS, shapes=(1, 3), events=True)


def read_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def decode(path: Path) -> tuple[torch.Tensor, list[float]]:
    """float [T,H,W,3] frames and their timestamps."""
    with open_video(path) as video:
        frames = video.get_frames(np.arange(video.metadata.num_frames))
        return frames.float().permute(0, 2, 3, 1), list(video.metadata.timestamps)


def color_mask(pixels: torch.Tensor, color: str) -> torch.Tensor:
    """bool [..., H, W]: pixels close to ``color`` (edges blended by chroma subsampling are left out)."""
    return ((pixels - torch.tensor(COLORS_RGB[color]).float()) ** 2).sum(-1).sqrt() < 80


def test_rows_hold_shapes_events_and_captions(scenes: Path) -> None:
    rows = read_rows(scenes)
    counts, stories = set(), set()
    for r in rows:
        shapes = r["shapes"]
        counts.add(len(shapes))
        stories.update(s["motion"] for s in shapes)
        assert r["attributes"]["count"] == len(shapes)
        assert len({s["color"] for s in shapes}) == len({s["shape"] for s in shapes}) == len(shapes)
        assert all(len(s["boxes"]) == FRAMES for s in shapes)
        clauses = []
        for i, s in enumerate(shapes):
            (event,) = [e for e in r["events"] if e["shape"] == i] or [None]
            assert (event is None) == (s["motion"] == "moves")
            directions = [s["direction"]] + ([event["direction"]] if s["motion"] == "turns" else [])
            clauses.append(clause(f"{s['size']} {s['color']} {s['shape']}", s["motion"], directions))
        assert r["caption"] == " and ".join(clauses)
        if len(shapes) == 1:
            assert r["label"] == SHAPES_ATTRIBUTES["direction"].index(shapes[0]["direction"])
            assert {k: r["attributes"][k] for k in ("color", "shape", "size", "direction")} == {
                k: shapes[0][k] for k in ("color", "shape", "size", "direction")
            }
        else:
            assert r["label"] == -1 and set(r["attributes"]) == {"count"}
        assert [e["frame"] for e in r["events"]] == sorted(e["frame"] for e in r["events"])
    assert counts == {1, 2, 3} and len(stories) >= 4


def test_boxes_are_exact_on_rendered_frames() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        scene = sample_scene(rng, FRAMES, SIZE, FPS, count=(2, 3), events=True)
        pixels = torch.from_numpy(scene.render(SIZE)).float()
        for track in scene.tracks:
            mask = color_mask(pixels, track.color)  # [T,H,W]
            for f, box in enumerate(track.boxes()):
                if box is None:
                    assert not mask[f].any(), f"{track.name} drawn at hidden frame {f}"
                    continue
                ys, xs = torch.nonzero(mask[f], as_tuple=True)
                assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box, f"{track.name} frame {f}"


def test_boxes_contain_the_decoded_pixels(scenes: Path) -> None:
    for r in read_rows(scenes):
        pixels, _ = decode(scenes.parent / r["path"])
        for s in r["shapes"]:
            mask = color_mask(pixels, s["color"])
            for f, box in enumerate(s["boxes"]):
                if box is None:
                    assert not mask[f].any(), f"{r['path']}: {s['color']} {s['shape']} visible at hidden frame {f}"
                    continue
                x0, y0, x1, y1 = box
                side = shape_side(s["size"], SIZE)
                assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE and x1 - x0 <= side and y1 - y0 <= side
                inside = torch.zeros_like(mask[f])
                inside[y0:y1, x0:x1] = True
                assert not (mask[f] & ~inside).any(), f"{r['path']}: {s['color']} pixels outside {box} at frame {f}"
                assert mask[f][inside].float().mean() > 0.25, f"{r['path']}: {s['color']} box {box} mostly empty"


def centroids(mask: torch.Tensor) -> torch.Tensor:
    """float [T,2] (x, y) centroid of a bool [T,H,W] mask per frame (NaN where empty)."""
    ys, xs = torch.meshgrid(torch.arange(mask.shape[1]), torch.arange(mask.shape[2]), indexing="ij")
    count = mask.flatten(1).sum(1)
    return torch.stack([(mask * xs).flatten(1).sum(1) / count, (mask * ys).flatten(1).sum(1) / count], dim=1)


def test_event_times_match_the_frames(scenes: Path) -> None:
    seen = set()
    for r in read_rows(scenes):
        pixels, timestamps = decode(scenes.parent / r["path"])
        for e in r["events"]:
            s, k = r["shapes"][e["shape"]], e["frame"]
            seen.add(s["motion"])
            assert e["event"] == EVENT_OF_STORY[s["motion"]] and 1 <= k <= FRAMES - 2
            assert e["time"] == k / FPS == pytest.approx(timestamps[k], abs=1e-6)
            c = centroids(color_mask(pixels, s["color"]))  # from the decoded pixels, not the boxes
            visible = ~c[:, 0].isnan()
            moved = (c[1:] - c[:-1]).abs().amax(dim=1) > 0.5  # [T-1]: between frame f and f + 1
            if s["motion"] == "starts":  # one position up to t, a new one at every later frame
                assert not moved[:k].any() and moved[k:].all(), (r["path"], e, c)
            elif s["motion"] == "stops":
                assert moved[:k].all() and not moved[k:].any(), (r["path"], e, c)
            elif s["motion"] == "turns":
                step = c[1:] - c[:-1]
                before, after = DIRECTIONS[s["direction"]], DIRECTIONS[e["direction"]]
                assert (torch.sign(step[:k].round()) == torch.tensor(before)).all(), (r["path"], e, c)
                assert (torch.sign(step[k:].round()) == torch.tensor(after)).all(), (r["path"], e, c)
            elif s["motion"] == "appears":
                assert not visible[:k].any() and visible[k:].all()
            elif s["motion"] == "disappears":
                assert visible[:k].all() and not visible[k:].any()
    assert seen == set(STORIES) - {"moves"}, seen


def test_middle_frame_does_not_reveal_direction_in_one_shape_scenes() -> None:
    rng = np.random.default_rng(1)
    mids: dict[str, list[tuple[int, int]]] = {d: [] for d in SHAPES_ATTRIBUTES["direction"]}
    for _ in range(2000):
        (track,) = sample_scene(rng, 16, 64, 8, count=(1, 1), events=True).tracks
        if track.size == "big":
            mids[track.directions[0]].append((int(track.x[8]), int(track.y[8])))
            assert track.x.min() >= 0 and track.x.max() <= 64 - track.side
            assert track.y.min() >= 0 and track.y.max() <= 64 - track.side
    for axis in (0, 1):
        ranges = {d: (min(p[axis] for p in v), max(p[axis] for p in v)) for d, v in mids.items()}
        assert len(set(ranges.values())) == 1, ranges
        means = [np.mean([p[axis] for p in v]) for v in mids.values()]
        assert max(means) - min(means) < 1.5, means


def test_same_seed_same_scenes_and_conversations_leave_clips_alone(tmp_path: Path, scenes: Path) -> None:
    keywords = {"frames": FRAMES, "size": SIZE, "fps": FPS, "shapes": (1, 3), "events": True}
    again = make_synthetic(tmp_path / "again", 12, seed=3, **keywords)
    assert again.read_text() == scenes.read_text()
    talk = make_synthetic(tmp_path / "talk", 12, seed=3, conversations=True, **keywords)
    for plain, rich in zip(read_rows(scenes), read_rows(talk), strict=True):
        assert {k: v for k, v in rich.items() if k not in ("conversation", "qa")} == plain
    first = read_rows(scenes)[0]["path"]
    assert (tmp_path / "talk" / first).read_bytes() == (scenes.parent / first).read_bytes()
    other = make_synthetic(tmp_path / "other", 12, seed=4, **keywords)
    assert other.read_text() != scenes.read_text()


def parse_clause(text: str) -> tuple[str, str, tuple[str, ...]]:
    """The inverse of :func:`clause` for a video clause: (shape name, story, directions)."""
    name = " ".join(text.split()[1:4])
    for story in STORIES:
        pairs = story == "turns"
        for directions in [(a, b) for a in DIRECTIONS for b in DIRECTIONS] if pairs else [(d,) for d in DIRECTIONS]:
            if clause(name, story, directions) == text:
                return name, story, directions
    raise AssertionError(f"not a clause: {text!r}")


def test_negatives_contradict_the_scene_in_one_detail_of_motion(tmp_path: Path, scenes: Path) -> None:
    """Each negative names the same shapes in the same order, changes the story or directions of one shape (or
    exchanges two shapes' first directions), keeps turns perpendicular, and so describes another scene. Per shape
    there are 3 direction changes (a turn: 3 changes of its pair) and, for an event at one end of the motion, the
    other end. Rows and clips are otherwise those made without negatives."""
    keywords = {"frames": FRAMES, "size": SIZE, "fps": FPS, "shapes": (1, 3), "events": True}
    manifest = make_synthetic(tmp_path, 12, seed=3, negatives=True, **keywords)
    exchanges = 0
    for row, plain in zip(read_rows(manifest), read_rows(scenes), strict=True):
        assert {k: v for k, v in row.items() if k != "negatives"} == plain
        truth = [parse_clause(c) for c in row["caption"].split(" and ")]
        negatives = row["negatives"]
        assert len(set(negatives)) == len(negatives) and row["caption"] not in negatives
        per_shape = {(i, kind): 0 for i in range(len(truth)) for kind in ("direction", "event")}
        for negative in negatives:
            parsed = [parse_clause(c) for c in negative.split(" and ")]
            assert [p[0] for p in parsed] == [t[0] for t in truth]
            for _, story, directions in parsed:
                if story == "turns":
                    assert bool(DIRECTIONS[directions[0]][0]) != bool(DIRECTIONS[directions[1]][0]), negative
            changed = [i for i, (p, t) in enumerate(zip(parsed, truth, strict=True)) if p != t]
            assert 1 <= len(changed) <= 2, negative
            if len(changed) == 2:  # two shapes' first directions exchanged, stories kept
                (_, sa, da), (_, sb, db) = (parsed[i] for i in changed)
                (_, ta, ea), (_, tb, eb) = (truth[i] for i in changed)
                assert (sa, sb) == (ta, tb) and (da[0], db[0]) == (eb[0], ea[0]) and da[1:] == ea[1:]
                exchanges += 1
                continue
            i = changed[0]
            (_, story, directions), (_, true_story, true_directions) = parsed[i], truth[i]
            if story == true_story:
                per_shape[i, "direction"] += 1
            else:
                assert directions == true_directions
                assert {story, true_story} in ({"starts", "stops"}, {"appears", "disappears"})
                per_shape[i, "event"] += 1
        for i, (_, story, _) in enumerate(truth):
            assert per_shape[i, "direction"] == 3
            assert per_shape[i, "event"] == (story in ("starts", "stops", "appears", "disappears"))
    assert exchanges > 0


def parse_timed(text: str) -> tuple[str, list[float | None]]:
    """A timed caption without its times, and each clause's time (None for a clause without one)."""
    clauses, times = [], []
    for part in text.split(" and "):
        found = re.search(r" at ([0-9.]+) seconds?", part)
        times.append(None if found is None else float(found.group(1)))
        clauses.append(part if found is None else part.replace(found.group(0), ""))
    return " and ".join(clauses), times


def test_timed_captions_say_when_each_event_happens(tmp_path: Path) -> None:
    """A timed caption is the plain one with each event's time (from the row's ``events``) after its event word; its
    negatives are the plain negatives with the true times, plus each event moved by 1 and 2 s within the frames
    events are drawn at. The clips and the other fields are those made without it."""
    keywords = {"frames": 16, "size": 48, "fps": 2, "shapes": (1, 3), "events": True, "negatives": True}
    plain = read_rows(make_synthetic(tmp_path / "plain", 10, seed=5, **keywords))
    timed = read_rows(make_synthetic(tmp_path / "timed", 10, seed=5, timed_captions=True, **keywords))
    lo, hi = event_frames(16)
    moved = 0
    for row, base in zip(timed, plain, strict=True):
        assert {k: v for k, v in row.items() if k not in ("caption", "negatives")} == {
            k: v for k, v in base.items() if k not in ("caption", "negatives")
        }
        assert (tmp_path / "timed" / row["path"]).read_bytes() == (tmp_path / "plain" / base["path"]).read_bytes()
        text, times = parse_timed(row["caption"])
        assert text == base["caption"]
        assert times == [next((e["time"] for e in row["events"] if e["shape"] == i), None) for i in range(len(times))]
        assert "appears at" in row["caption"] or "appears" not in row["caption"]  # the time follows the event word
        kept, shifted = [], {i: set() for i, t in enumerate(times) if t is not None}
        for negative in row["negatives"]:
            text, negative_times = parse_timed(negative)
            if text != base["caption"]:
                kept.append(text)
                assert negative_times == times, negative
                continue
            (i,) = [i for i, (a, b) in enumerate(zip(negative_times, times, strict=True)) if a != b]
            shifted[i].add(negative_times[i] - times[i])
        assert kept == base["negatives"]
        for i, shifts in shifted.items():
            frame = round(times[i] * 2)
            assert shifts == {s for s in (-2.0, -1.0, 1.0, 2.0) if lo <= frame + 2 * s <= hi}, (row["caption"], i)
            moved += len(shifts)
    assert moved > 0


def test_negatives_of_single_shape_clips_and_stills(tmp_path: Path) -> None:
    manifest = make_synthetic(tmp_path, 4, seed=0, frames=FRAMES, size=SIZE, negatives=True)
    for row in read_rows(manifest):
        others = {row["caption"].replace(row["attributes"]["direction"], d) for d in DIRECTIONS}
        assert set(row["negatives"]) == others - {row["caption"]}
    with pytest.raises(ConfigError, match="negatives"):
        make_synthetic(tmp_path / "stills", 2, seed=0, size=SIZE, images=True, negatives=True)


def test_still_scenes(tmp_path: Path) -> None:
    manifest = make_synthetic(tmp_path, 4, seed=2, size=SIZE, images=True, shapes=3)
    for r in read_rows(manifest):
        assert "events" not in r and "moves" not in r["caption"] and len(r["shapes"]) == 3
        assert all("direction" not in s and len(s["boxes"]) == 1 for s in r["shapes"])
        pixels, _ = decode(tmp_path / r["path"])
        for s in r["shapes"]:
            ys, xs = torch.nonzero(color_mask(pixels[0], s["color"]), as_tuple=True)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == s["boxes"][0]  # PNG is lossless


@pytest.mark.parametrize(
    ("keywords", "key"),
    [
        ({"shapes": (0, 2)}, "shapes"),
        ({"shapes": (1, 4)}, "shapes"),
        ({"shapes": (3, 1)}, "shapes"),
        ({"events": True, "images": True}, "events"),
        ({"events": True, "frames": 3}, "events"),
        ({"shapes": 2, "timed_captions": True}, "timed_captions"),
        ({"shapes": 2, "frames": 64, "size": 32}, "frames"),
    ],
)
def test_bad_scene_arguments(tmp_path: Path, keywords: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make_synthetic(tmp_path, 1, 0, **keywords)


def test_cli_scenes_and_text(tmp_path: Path) -> None:
    tool = [sys.executable, str(ROOT / "tools" / "make_synthetic.py")]
    common = ["--num", "2", "--frames", "8", "--size", "48", "--seed", "1"]
    scene_flags = ["--shapes", "2", "--events", "--conversations", "--negatives", "--timed-captions"]
    subprocess.run([*tool, "--out", str(tmp_path / "s"), *common, *scene_flags], check=True, capture_output=True)
    rows = read_rows(tmp_path / "s" / "manifest.jsonl")
    assert all(
        len(r["shapes"]) == 2 and "events" in r and r["conversation"] and r["qa"] and r["negatives"] for r in rows
    )
    timed = [len(re.findall(r" at [0-9.]+ seconds?\b", r["caption"])) for r in rows]
    assert timed == [len(r["events"]) for r in rows]
    per_shape = [*scene_flags, "--qa-per-shape", "color"]
    subprocess.run([*tool, "--out", str(tmp_path / "p"), *common, *per_shape], check=True, capture_output=True)
    for row, plain in zip(read_rows(tmp_path / "p" / "manifest.jsonl"), rows, strict=True):
        colours = [q["answer"] for q in row["qa"] if q["type"] == "color"]
        assert sorted(colours) == sorted(s["color"] for s in row["shapes"]) and row["shapes"] == plain["shapes"]
    bad = subprocess.run([*tool, "--out", str(tmp_path / "b"), *common, "--qa-per-shape", "color"], capture_output=True)
    assert bad.returncode == 2 and b"qa_per_shape" in bad.stderr and b"Traceback" not in bad.stderr
    subprocess.run([*tool, "--out", str(tmp_path / "t"), "--num", "5", "--text"], check=True, capture_output=True)
    assert len((tmp_path / "t" / "text.jsonl").read_text().splitlines()) == 5
    bad = subprocess.run([*tool, "--out", str(tmp_path / "b"), *common, "--shapes", "1", "5"], capture_output=True)
    assert bad.returncode == 2 and b"shapes" in bad.stderr and b"Traceback" not in bad.stderr
