"""VideoTextDataset on real files: manifests, image rows, windows, failure replacement, determinism, collation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidvlm.data.collate import collate_video_text
from vidvlm.data.datasets import VideoTextDataset, read_manifest
from vidvlm.data.sampling import AllFramesSampler, FpsSampler, UniformSampler
from vidvlm.data.synthetic import make_synthetic
from vidvlm.data.transforms import build_transform
from vidvlm.errors import ConfigError, VideoDecodeError


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 clips (16 frames at 8 fps, 2 s) + 2 stills + a corrupt file, in one folder."""
    root = tmp_path_factory.mktemp("media")
    make_synthetic(root, 6, seed=0)
    make_synthetic(root, 2, seed=0, images=True, manifest_name="images.jsonl")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real movie")
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_rows(media: Path) -> list[dict]:
    return [json.loads(line) for line in (media / "manifest.jsonl").read_text().splitlines()]


def test_jsonl_with_images_and_mixed_t_collate(media: Path) -> None:
    rows = synthetic_rows(media)[:3] + [json.loads(x) for x in (media / "images.jsonl").read_text().splitlines()]
    manifest = write_jsonl(media / "mixed.jsonl", rows)
    ds = VideoTextDataset(manifest, FpsSampler(2.0, max_frames=8), build_transform(32))
    samples = [ds[i] for i in range(len(ds))]
    assert [s["video"].shape[0] for s in samples] == [4, 4, 4, 1, 1]  # 2 s at 2 fps; an image is T = 1
    s = samples[0]
    assert s["video"].dtype == torch.float32 and s["video"].shape[1:] == (3, 32, 32)
    assert s["text"] == rows[0]["caption"] and s["captions"] == [rows[0]["caption"]]
    assert s["label"] == rows[0]["label"] and s["index"] == 0 and s["replaced_from"] == -1
    assert s["path"] == str(media / rows[0]["path"])
    torch.testing.assert_close(s["timestamps"], torch.tensor([0.0, 0.5, 1.0, 1.5]))
    assert samples[3]["label"] == -1 and samples[3]["timestamps"].tolist() == [0.0]

    batch = collate_video_text(samples)
    assert batch["video"].shape == (5, 4, 3, 32, 32)
    assert batch["frame_mask"].tolist() == [[True] * 4] * 3 + [[True, False, False, False]] * 2
    assert (batch["video"][3:, 1:] == 0).all() and torch.equal(batch["video"][3, 0], samples[3]["video"][0])
    assert batch["label"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["timestamps"].shape == (5, 4) and batch["text"][4] == rows[4]["caption"]
    assert batch["captions"][0] == [rows[0]["caption"]] and batch["replaced_from"].tolist() == [-1] * 5


def test_csv_manifest_with_captions_list_and_window(media: Path) -> None:
    name = synthetic_rows(media)[0]["path"]
    csv = media / "rows.csv"
    csv.write_text(
        "path,captions,start,end,label\n"
        f'{name},"[""first caption"", ""second caption""]",0.5,1.0,3\n'
        f"{name},,,,\n".replace(",,,,", ',"[""only""]",,,')
    )
    ds = VideoTextDataset(csv, AllFramesSampler(), transform=None)
    s = ds[0]
    assert s["captions"] == ["first caption", "second caption"] and s["text"] == "first caption"
    assert s["label"] == 3 and s["video"].dtype == torch.uint8 and s["video"].shape[0] == 4
    torch.testing.assert_close(s["timestamps"], torch.tensor([0.5, 0.625, 0.75, 0.875]))
    # the window holds the same pixels as the same frames of the whole clip
    full = ds[1]
    assert full["video"].shape[0] == 16 and torch.equal(full["video"][4:8], s["video"])
    assert ds[1]["label"] == -1


def test_hard_negatives_reach_the_batch(media: Path) -> None:
    """A row's ``negatives`` (JSONL list or CSV JSON cell) ride with its sample; collation lists every sample's,
    empty for a row without; a batch with none has no ``negatives`` key."""
    rows = synthetic_rows(media)[:3]
    rows[0]["negatives"] = ["a big red square moves up", "a big red square moves down"]
    rows[2]["negatives"] = []
    ds = VideoTextDataset(write_jsonl(media / "negatives.jsonl", rows), UniformSampler(2), build_transform(32))
    batch = collate_video_text([ds[i] for i in range(3)])
    assert batch["negatives"] == [rows[0]["negatives"], [], []]
    assert "negatives" not in collate_video_text([ds[1]])
    csv = media / "negatives.csv"
    csv.write_text(f'path,caption,negatives\n{rows[0]["path"]},c,"[""not c""]"\n{rows[1]["path"]},d,\n')
    assert [r.extra.get("negatives") for r in read_manifest(csv)] == [["not c"], None]


def test_training_randomness_is_deterministic_per_seed_epoch_index(media: Path) -> None:
    rows = synthetic_rows(media)
    rows[0]["captions"] = ["caption a", "caption b", "caption c"]
    del rows[0]["caption"]
    manifest = write_jsonl(media / "train.jsonl", rows)

    def make(seed: int) -> VideoTextDataset:
        return VideoTextDataset(manifest, UniformSampler(4), build_transform(24, train=True), train=True, seed=seed)

    a, b = make(0), make(0)
    s1, s2 = a[0], b[0]
    assert torch.equal(s1["video"], s2["video"]) and s1["text"] == s2["text"]
    assert torch.equal(s1["timestamps"], s2["timestamps"])
    draws = set()
    for epoch in range(8):
        a.set_epoch(epoch)
        s = a[0]
        draws.add((s["text"], tuple(s["timestamps"].tolist()), float(s["video"].sum())))
    assert len(draws) == 8 and len({d[0] for d in draws}) > 1  # epochs differ, captions vary
    a.set_epoch(3)
    b.set_epoch(3)
    assert torch.equal(a[0]["video"], b[0]["video"])  # resuming at epoch 3 gives the same sample


def test_corrupt_sample_is_logged_counted_and_replaced_deterministically(media: Path, caplog) -> None:
    rows = synthetic_rows(media)[:4] + [
        {"path": "corrupt.mp4", "caption": "broken"},
        {"path": "gone.mp4", "caption": "x"},
    ]
    manifest = write_jsonl(media / "with_bad.jsonl", rows)
    ds = VideoTextDataset(manifest, UniformSampler(4), build_transform(32), seed=1)
    with caplog.at_level(logging.WARNING, logger="vidvlm.data.datasets"):
        first = ds[4]
        again = ds[4]
        ds[5]
    assert first["replaced_from"] == 4 and first["index"] not in (4, 5)
    assert again["index"] == first["index"] and torch.equal(again["video"], first["video"])
    stats = ds.stats()
    assert stats["failures"] >= 3 and stats["replacements"] >= 3
    assert str(media / "corrupt.mp4") in stats["failed_paths"] and str(media / "gone.mp4") in stats["failed_paths"]
    assert sum("corrupt.mp4" in r.message for r in caplog.records) == 1  # logged once per file
    assert "with_bad.jsonl:5" in caplog.text
    other_seed = VideoTextDataset(manifest, UniformSampler(4), build_transform(32), seed=2)
    picks = {other_seed[4]["index"]} | {(other_seed.set_epoch(e), other_seed[4]["index"])[1] for e in range(1, 6)}
    assert len(picks) > 1  # the replacement depends on (seed, epoch), not a fixed neighbour
    assert ds[0]["replaced_from"] == -1


def test_all_bad_raises_after_bounded_retries(media: Path) -> None:
    manifest = write_jsonl(media / "all_bad.jsonl", [{"path": "corrupt.mp4", "caption": "a"}] * 3)
    ds = VideoTextDataset(manifest, UniformSampler(2), max_retries=4)
    with pytest.raises(VideoDecodeError, match=r"all_bad.jsonl: sample 1 and 4 replacements"):
        ds[1]
    assert ds.stats()["failures"] == 5


def test_dataloader_workers_carry_replacements(media: Path) -> None:
    rows = synthetic_rows(media)[:3] + [{"path": "corrupt.mp4", "caption": "broken"}]
    manifest = write_jsonl(media / "loader.jsonl", rows)
    ds = VideoTextDataset(manifest, UniformSampler(2), build_transform(16))
    loader = DataLoader(ds, batch_size=4, num_workers=1, collate_fn=collate_video_text)
    batch = next(iter(loader))
    assert batch["replaced_from"].tolist() == [-1, -1, -1, 3]  # counted in the main process
    assert batch["video"].shape == (4, 2, 3, 16, 16)


def collate_reporting_shared_memory(samples: list[dict]) -> dict:
    batch = collate_video_text(samples)
    batch["video_in_shared_memory"] = batch["video"].is_shared()  # seen where collation ran
    return batch


def test_worker_batches_are_built_in_shared_memory(media: Path) -> None:
    """Inside a worker the batch is stacked into shared memory (handed over without another copy); padding stays 0."""
    ds = VideoTextDataset(write_jsonl(media / "shm.jsonl", synthetic_rows(media)[:2]), UniformSampler(2),
                          build_transform(16))  # fmt: skip
    loader = DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate_reporting_shared_memory)
    batch = next(iter(loader))
    assert batch["video_in_shared_memory"] is True
    assert collate_reporting_shared_memory([ds[0], ds[1]])["video_in_shared_memory"] is False  # no worker here
    short = {**ds[0], "video": ds[0]["video"][:1], "timestamps": ds[0]["timestamps"][:1]}
    padded = collate_video_text([ds[1], short])["video"]
    assert torch.equal(padded[1, 0], short["video"][0]) and bool((padded[1, 1] == 0).all())


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"path": "a.mp4", "caption": "ok"}\n{"path": "b.mp4", "caption": \n', r"bad.jsonl:2: not valid JSON"),
        ('{"path": "a.mp4", "caption": "ok"}\n\n{"caption": "no path"}\n', r"bad.jsonl:3: missing the 'path'"),
        ('{"path": "a.mp4"}\n', r"bad.jsonl:1: missing a caption"),
        ('{"path": "a.mp4", "captions": []}\n', r"bad.jsonl:1: 'captions' must be a non-empty list"),
        ('{"path": "a.mp4", "caption": "c", "start": 2, "end": 1}\n', r"bad.jsonl:1: 'end' \(1.0\) must be after"),
        ('{"path": "a.mp4", "caption": "c", "label": "x"}\n', r"bad.jsonl:1: 'label' must be an integer"),
        ('{"path": "a.mp4", "caption": "c", "negatives": "x"}\n', r"bad.jsonl:1: 'negatives' must be a list"),
        ('{"path": "a.mp4", "caption": "c", "negatives": ["x", ""]}\n', r"bad.jsonl:1: 'negatives' must be a list"),
        ("", r"bad.jsonl: the manifest has no rows"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.jsonl").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_manifest(tmp_path / "bad.jsonl")


def test_csv_and_file_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text('path,caption\na.mp4,fine\nb.mp4,"multi\nline"\nc.mp4,\n')
    with pytest.raises(ConfigError, match=r"bad.csv:5: missing a caption"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "nopath.csv").write_text("file,caption\na.mp4,x\n")
    with pytest.raises(ConfigError, match=r"nopath.csv:1: the header must name a 'path' column"):
        read_manifest(tmp_path / "nopath.csv")
    with pytest.raises(ConfigError, match=r"missing.jsonl: manifest file not found"):
        VideoTextDataset(tmp_path / "missing.jsonl", UniformSampler(2))
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ConfigError, match="unknown manifest format"):
        read_manifest(tmp_path / "rows.txt")


def test_collate_rejects_mixed_frame_sizes() -> None:
    def sample(h: int) -> dict:
        return {
            "video": torch.zeros(2, 3, h, h),
            "text": "t",
            "captions": ["t"],
            "label": -1,
            "index": 0,
            "path": f"{h}.mp4",
            "timestamps": torch.zeros(2),
        }

    with pytest.raises(ValueError, match="16.mp4"):
        collate_video_text([sample(8), sample(16)])
    assert collate_video_text([sample(8)])["frame_mask"].all()


def test_paths_are_relative_to_manifest_folder(media: Path, tmp_path: Path) -> None:
    rows = read_manifest(media / "manifest.jsonl")
    assert all(Path(r.path).parent == media for r in rows)
    assert all(Path(r.path).is_file() for r in rows)
    assert rows[0].attributes and rows[0].line == 1
    np.testing.assert_array_equal(
        [r.label for r in rows], [json.loads(x)["label"] for x in (media / "manifest.jsonl").read_text().splitlines()]
    )


def test_decode_size_and_eval_is_deterministic(media: Path) -> None:
    ds = VideoTextDataset(media / "manifest.jsonl", UniformSampler(3), decode_size=(32, 40))
    a, b = ds[2], ds[2]
    assert a["video"].shape == (3, 3, 32, 40) and a["video"].dtype == torch.uint8
    assert torch.equal(a["video"], b["video"]) and a["timestamps"].tolist() == [0.25, 1.0, 1.625]  # frames 2, 8, 13


def test_evaluation_never_substitutes_mark_and_raise(media: Path) -> None:
    """on_error="mark" returns the failed row marked (collate leaves it out and lists it); "raise" stops at it."""
    rows = synthetic_rows(media)[:2] + [{"path": "gone.mp4", "caption": "x"}, {"path": "corrupt.mp4", "caption": "y"}]
    manifest = write_jsonl(media / "eval_bad.jsonl", rows)
    marked = VideoTextDataset(manifest, UniformSampler(2), build_transform(16), on_error="mark")
    gone = marked[2]
    assert gone["video"] is None and gone["index"] == 2 and gone["path"] == str(media / "gone.mp4")
    assert "gone.mp4: file does not exist" in gone["error"] and marked[0]["error"] is None
    assert marked.stats()["replacements"] == 0
    loader = DataLoader(marked, batch_size=4, num_workers=1, collate_fn=collate_video_text)
    (batch,) = list(loader)
    assert batch["index"].tolist() == [0, 1] and batch["video"].shape == (2, 2, 3, 16, 16)
    assert [f["index"] for f in batch["failed"]] == [2, 3] and "corrupt.mp4" in batch["failed"][1]["path"]
    empty = collate_video_text([marked[2], marked[3]])
    assert empty["video"] is None and empty["index"].numel() == 0 and len(empty["failed"]) == 2
    strict = VideoTextDataset(manifest, UniformSampler(2), on_error="raise")
    with pytest.raises(VideoDecodeError, match="gone.mp4: file does not exist"):
        strict[2]
    assert strict.stats()["replacements"] == 0
    with pytest.raises(ConfigError, match="on_error: 'skip' is not one of"):
        VideoTextDataset(manifest, UniformSampler(2), on_error="skip")


@pytest.mark.parametrize("entry", ["../secret.mp4", "sub/../../secret.mp4", "/etc/passwd", "~/../../x.mp4"])
def test_manifest_paths_may_not_leave_the_folder(tmp_path: Path, entry: str) -> None:
    """A downloaded manifest cannot point a tool at files outside its own folder (``~`` is not expanded: it is a
    folder named ``~`` inside, and ``..`` from there leads out)."""
    folder = tmp_path / "data"
    folder.mkdir()
    good = json.dumps({"path": "a.mp4", "caption": "ok"})
    (folder / "m.jsonl").write_text(good + "\n" + json.dumps({"path": entry, "caption": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"m\.jsonl:2: path .* leads outside"):
        read_manifest(folder / "m.jsonl")
    (folder / "m.csv").write_text(f"path,caption\na.mp4,ok\n{entry},x\n")
    with pytest.raises(ConfigError, match=r"m\.csv:3: path .* leads outside"):
        read_manifest(folder / "m.csv")


def test_manifest_paths_inside_the_folder_are_kept(tmp_path: Path) -> None:
    """Absolute paths inside the folder, ``..`` that stays inside, a symlink the user placed inside and a ``~`` (a
    folder of that name, not the home folder) are fine."""
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (folder / "linked").symlink_to(tmp_path / "elsewhere")
    rows = [{"path": str(folder / "a.mp4")}, {"path": "sub/../b.mp4"}, {"path": "linked/c.mp4"}, {"path": "~/d.mp4"}]
    (folder / "m.jsonl").write_text("".join(json.dumps({**r, "caption": "x"}) + "\n" for r in rows))
    got = [r.path for r in read_manifest(folder / "m.jsonl")]
    assert got == [str(folder / p) for p in ("a.mp4", "sub/../b.mp4", "linked/c.mp4", "~/d.mp4")]
