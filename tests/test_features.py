"""Feature extraction: every level, mixed images and videos, unreadable files, invariance to batching and workers,
multi-clip averaging, parity with a direct call of the tower and with HF CLIP, and the resumable shard store."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vidvlm.data.sampling import UniformSampler, clip_windows
from vidvlm.data.synthetic import make_synthetic
from vidvlm.data.transforms import build_transform
from vidvlm.data.video import open_video
from vidvlm.errors import ConfigError
from vidvlm.extract import (
    extract_features,
    extract_text_features,
    extract_to_dir,
    iter_features,
    list_sources,
    load_features,
    read_index,
)
from vidvlm.models.vision import VideoViT, VisionConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A folder of 4 videos (12 and 6 frames), 2 PNG images, a corrupt MP4 and a text file (not a source)."""
    root = tmp_path_factory.mktemp("media")
    make_synthetic(root, 2, seed=0, frames=12, size=32, manifest_name="a.jsonl")
    make_synthetic(root, 2, seed=0, frames=6, size=32, split="val", manifest_name="b.jsonl")
    make_synthetic(root, 2, seed=0, size=32, images=True, split="test", manifest_name="c.jsonl")
    for m in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (root / m).unlink()
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(200))
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return VideoViT(VisionConfig(image_size=32, patch_size=8, width=32, depth=2, num_heads=2)).eval()


TF = build_transform(32)
BAD = {"broken.mp4"}


def by_name(results):
    return {os.path.basename(r.source): r for r in results}


@pytest.mark.parametrize(
    "level,shape",
    [("pooled", {12: (32,), 6: (32,), 1: (32,)}), ("frames", {12: (8, 32), 6: (6, 32), 1: (1, 32)}),
     ("tokens", {12: (8 * 17, 32), 6: (6 * 17, 32), 1: (17, 32)}),
     ("layers", {12: (2, 8, 17, 32), 6: (2, 6, 17, 32), 1: (2, 1, 17, 32)})],
)  # fmt: skip
def test_every_level_mixed_images_and_videos(media, tower, level, shape):
    res = by_name(extract_features(tower, media, level=level, transform=TF, layers=[0, -1], batch_size=4))
    assert set(res) == {"train_00000.mp4", "train_00001.mp4", "val_00000.mp4", "val_00001.mp4",
                        "test_00000.png", "test_00001.png"} | BAD  # fmt: skip
    for name in BAD:
        assert not res[name].ok and res[name].features is None
        assert "VideoDecodeError" in res[name].error and name in res[name].error
    lengths = {"train": 12, "val": 6, "test": 1}
    for name, r in res.items():
        if name in BAD:
            continue
        n = lengths[name.split("_")[0]]
        assert r.ok and tuple(r.features.shape) == shape[n]
        assert r.timestamps.shape == (min(n, 8),)  # 8 uniform frames, fewer when the clip is shorter
        assert torch.isfinite(r.features).all()


def test_pooled_equals_direct_tower_call(media, tower):
    """The pooled feature is the frame-mean of pooler_output on exactly the sampled, transformed frames."""
    path = str(media / "train_00000.mp4")
    (r,) = extract_features(tower, [path], sampler=4, transform=TF)
    with open_video(path) as v:
        idx = UniformSampler(4, short_policy="fewer")(v.metadata)
        frames = TF(v.get_frames(idx))
        expect_ts = torch.tensor(v.metadata.timestamps, dtype=torch.float64)[torch.from_numpy(idx)]
    with torch.no_grad():
        expect = tower(frames[None]).pooler_output[0].mean(0)
    torch.testing.assert_close(r.features, expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r.timestamps, expect_ts)


@pytest.mark.parametrize("level", ["pooled", "frames", "layers"])
def test_independent_of_batch_size_and_workers(media, tower, level):
    kw = dict(level=level, transform=TF, layers=[1])
    ref = extract_features(tower, media, batch_size=1, num_workers=0, **kw)
    for bs, nw in [(16, 0), (3, 2)]:
        # fork keeps the test fast; the default start method (forkserver) is exercised by the CLI test.
        got = extract_features(tower, media, batch_size=bs, num_workers=nw, worker_start="fork", **kw)
        assert [r.source for r in got] == [r.source for r in ref]
        for a, b in zip(ref, got, strict=True):
            assert a.error == b.error
            if a.ok:
                torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(a.timestamps, b.timestamps)


def test_multi_clip_average(media, tower):
    path = str(media / "train_00000.mp4")
    (r,) = extract_features(tower, [path], sampler=2, num_clips=3, transform=TF)
    (f,) = extract_features(tower, [path], sampler=2, num_clips=3, transform=TF, level="frames")
    assert clip_windows(12, 3) == [(0, 4), (4, 8), (8, 12)]
    assert f.features.shape == (6, 32) and f.timestamps.shape == (6,)
    assert bool((f.timestamps[1:] > f.timestamps[:-1]).all())  # the clips follow each other in time
    with open_video(path) as v:
        clips = [TF(v.get_frames(np.array([a + 1, a + 3]))) for a in (0, 4, 8)]  # centre of 2 segments of 4
    with torch.no_grad():
        expect = torch.stack([tower(c[None]).pooler_output[0].mean(0) for c in clips]).mean(0)
    torch.testing.assert_close(r.features, expect, atol=1e-5, rtol=1e-5)
    assert clip_windows(1, 3) == [(0, 1)]  # an image gives one clip


def test_iter_features_streams_in_order(media, tower):
    it = iter_features(tower, media, transform=TF, batch_size=2)
    first = next(it)
    assert first.source == list_sources(media)[0]
    assert len([first, *it]) == 7


def test_bad_arguments(media, tower):
    with pytest.raises(ConfigError, match="level"):
        extract_features(tower, media, level="pixels", transform=TF)
    with pytest.raises(ConfigError, match="layers"):
        extract_features(tower, media, level="layers", transform=TF)
    with pytest.raises(ConfigError, match="transform"):
        extract_features(tower, media)  # a bare module has no eval transform
    with pytest.raises(ConfigError, match="not a vidvlm checkpoint"):
        extract_features(str(media), media)


def test_list_sources_manifests(tmp_path, media):
    (tmp_path / "list.txt").write_text(f"# comment\n{tmp_path / 'sub' / 'abs.mp4'}\nrel.mp4\n\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a.mp4", "caption": "x"}) + "\n")
    (tmp_path / "m.csv").write_text("video,label\nb.mp4,1\n")
    got = list_sources([tmp_path / "list.txt", tmp_path / "m.jsonl", tmp_path / "m.csv", tmp_path / "m.jsonl"])
    assert got == [str(tmp_path / "sub" / "abs.mp4"), str(tmp_path / "rel.mp4"), str(tmp_path / "a.mp4"),
                   str(tmp_path / "b.mp4")]  # fmt: skip
    (tmp_path / "bad.jsonl").write_text('{"caption": "no path"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1: the row has none of the path keys"):
        list_sources(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("name,text", [
    ("out.txt", "a.mp4\n{media}/train_00000.mp4\n"),
    ("out.jsonl", '{{"path": "a.mp4"}}\n{{"path": "../x.mp4"}}\n'),
    ("out.csv", "video\na.mp4\n../../x.mp4\n"),
])  # fmt: skip
def test_list_sources_refuses_paths_outside_the_list_folder(tmp_path, media, name, text):
    """A list or manifest names only files under its own folder; the error names the file and line (the second
    entry is on line 2 of a .txt or .jsonl, line 3 of a .csv with its header)."""
    (tmp_path / name).write_text(text.format(media=media))
    line = 3 if name.endswith(".csv") else 2
    with pytest.raises(ConfigError, match=rf"{name}:{line}: path .* leads outside"):
        list_sources(tmp_path / name)


def test_list_sources_folder_keeps_media_by_extension(tmp_path):
    """A folder gives its media files only (the generator's manifest.jsonl beside the clips is not a source); a file
    named directly is a source whatever its extension, and a manifest named directly is the list of sources."""
    manifest = make_synthetic(tmp_path / "clips", 2, seed=0, frames=4, size=32)
    sub = tmp_path / "clips" / "more"
    sub.mkdir()
    for name in ("B.MP4", "a.gif", "c.JPG", "notes.txt", "data.csv", ".hidden.mp4", "readme.md"):
        (sub / name).write_bytes(b"x")
    got = [os.path.relpath(p, tmp_path / "clips") for p in list_sources(tmp_path / "clips")]
    assert got == ["train_00000.mp4", "train_00001.mp4", "more/B.MP4", "more/a.gif", "more/c.JPG"]
    assert list_sources(sub / "readme.md") == [str(sub / "readme.md")]
    assert list_sources(manifest) == [str(tmp_path / "clips" / f"train_0000{i}.mp4") for i in range(2)]


def _write_index(out, shard: str) -> None:
    (out / "extract.json").write_text(json.dumps({"level": "pooled"}))
    (out / "index.jsonl").write_text(json.dumps({"source": "/v.mp4", "shard": shard, "rows": [0, 1],
                                                 "timestamps": [0.0]}) + "\n")  # fmt: skip


@pytest.mark.parametrize("shard", ["../x.safetensors", "/tmp/x.safetensors", "sub/shard-00000.safetensors", "evil"])
def test_index_pointing_outside_the_folder_is_refused(tmp_path, shard):
    out = tmp_path / "feats"
    out.mkdir()
    _write_index(out, shard)
    with pytest.raises(ConfigError, match=r"index.jsonl:1: shard .* (not a shard file|leads outside)"):
        load_features(out)


def test_index_shard_symlink_escaping_the_folder_is_refused(tmp_path, media, tower):
    out = tmp_path / "feats"
    extract_to_dir(tower, [media / "train_00000.mp4"], out, transform=TF, sampler=2)
    assert len(load_features(out)) == 1
    outside = tmp_path / "elsewhere.safetensors"
    (out / "shard-00000.safetensors").rename(outside)
    (out / "shard-00000.safetensors").symlink_to(outside)
    with pytest.raises(ConfigError, match="leads outside"):
        load_features(out)
    with pytest.raises(ConfigError, match="leads outside"):  # a rerun into the folder refuses it too
        extract_to_dir(tower, [media / "train_00001.mp4"], out, transform=TF, sampler=2)


def test_output_that_is_a_file_is_refused(tmp_path, media, tower):
    out = tmp_path / "feats.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(ConfigError, match="feats.safetensors: the output must be a directory"):
        extract_to_dir(tower, media, out, transform=TF)
    assert out.read_bytes() == b"keep me"


def test_hf_directory_needing_custom_code_is_refused(tmp_path, media):
    for name, cfg in {"mapped": {"model_type": "clip_vision_model", "auto_map": {"AutoModel": "modeling_x.XModel"}},
                      "unknown": {"model_type": "my_custom_tower"}}.items():  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        (tmp_path / name / "modeling_x.py").write_text("raise SystemExit('executed')\n")
        with pytest.raises(ConfigError, match=r"config.json: this model needs custom code .*trust_remote_code"):
            extract_features(str(tmp_path / name), media)
        with pytest.raises(ConfigError, match="custom code"):
            extract_to_dir(str(tmp_path / name), media, tmp_path / f"out_{name}")


class Interrupt(Exception):
    pass


def test_resume_after_interruption(tmp_path, media, tower):
    ref = {r.source: r for r in extract_features(tower, media, transform=TF, level="frames")}
    out = tmp_path / "feats"

    def stop_after_first(n):
        raise Interrupt

    with pytest.raises(Interrupt):
        extract_to_dir(tower, media, out, shard_size=3, transform=TF, level="frames", on_shard=stop_after_first)
    first = read_index(out)
    assert len(first) == 3 and sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors"]
    # Simulate a crash in the middle of the next shard: a half-written tmp file and a torn index line.
    (out / "shard-00001.safetensors.tmp").write_bytes(b"partial")
    with open(out / "index.jsonl", "a") as f:
        f.write('{"source": "/x", "sha')
    summary = extract_to_dir(tower, media, out, shard_size=3, transform=TF, level="frames", batch_size=5)
    assert (summary.done, summary.skipped, summary.failed) == (4, 3, 0)  # the bad file was in shard 0
    assert not list(out.glob("*.tmp"))
    index = read_index(out)
    assert len(index) == 7 and len({e["source"] for e in index}) == 7
    stored = load_features(out)
    assert {r.source for r in stored} == set(ref)
    for r in stored:
        assert r.error == ref[r.source].error
        if r.ok:
            torch.testing.assert_close(r.features, ref[r.source].features, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r.timestamps, ref[r.source].timestamps)
    again = extract_to_dir(tower, media, out, shard_size=3, transform=TF, level="frames")
    assert (again.done, again.skipped) == (0, 7)
    with pytest.raises(ConfigError, match="other settings"):
        extract_to_dir(tower, media, out, transform=TF, level="pooled")


def test_failed_sources_are_indexed_and_retried_on_request(tmp_path, media, tower):
    out = tmp_path / "feats"
    extract_to_dir(tower, media, out, transform=TF, sampler=2)
    errors = {os.path.basename(e["source"]): e["error"] for e in read_index(out) if "error" in e}
    assert set(errors) == BAD and all("VideoDecodeError" in e for e in errors.values())
    summary = extract_to_dir(tower, media, out, transform=TF, sampler=2, retry_failed=True)
    assert (summary.done, summary.failed, summary.skipped) == (0, 1, 6)


def test_hf_clip_directory_matches_transformers(tmp_path, media):
    """A bare HF CLIP vision tower (loaded from its directory) gives HF's own pooled output, frame-averaged."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)  # fmt: skip
    hf = CLIPVisionModel(cfg).eval()
    hf.save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "clip"
    )
    path = media / "train_00001.mp4"
    (r,) = extract_features(str(tmp_path / "clip"), [path], sampler=UniformSampler(4, anchor="start"))
    with open_video(path) as v:
        frames = v.get_frames(UniformSampler(4, anchor="start")(v.metadata))
    pixels = CLIPImageProcessor.from_pretrained(tmp_path / "clip")(images=list(frames.numpy().transpose(0, 2, 3, 1)),
                                                                     return_tensors="pt")["pixel_values"]  # fmt: skip
    with torch.no_grad():
        expect = hf(pixel_values=pixels).pooler_output.mean(0)
    torch.testing.assert_close(r.features, expect, atol=1e-4, rtol=1e-4)


def test_background_shard_writer_matches_the_synchronous_one_and_reports_errors(tmp_path, media, tower, monkeypatch):
    import vidvlm.extract.shards as shards

    results = extract_features(tower, media, transform=TF, level="frames")
    commits: dict[str, list[int]] = {"sync": [], "background": []}
    for mode in commits:
        with shards.ShardWriter(tmp_path / mode, {"level": "frames"}, shard_size=2, background=mode == "background",
                                on_commit=commits[mode].append) as writer:  # fmt: skip
            for r in results:
                writer.add(r)
        assert (writer.written, writer.failed) == (6, 1)
    assert commits["sync"] == commits["background"] == [1, 2, 3, 4]
    assert (tmp_path / "sync" / "index.jsonl").read_text() == (tmp_path / "background" / "index.jsonl").read_text()
    assert sorted(p.name for p in (tmp_path / "background").glob("shard-*")) == [f"shard-0000{i}.safetensors"
                                                                                 for i in range(4)]  # fmt: skip
    for a, b in zip(load_features(tmp_path / "sync"), load_features(tmp_path / "background"), strict=True):
        assert a.source == b.source and a.error == b.error
        assert a.features is None or torch.equal(a.features, b.features)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards, "save_file", disk_full)
    writer = shards.ShardWriter(tmp_path / "full", {"level": "frames"}, shard_size=2, background=True)
    with pytest.raises(OSError, match="No space left"), writer:
        for r in results:
            writer.add(r)  # the writer thread's error comes back here, at the next shard
    assert read_index(tmp_path / "full") == [] and writer.written == 0
    shards.extraction_lock(tmp_path / "full").release()  # the directory was released


def test_extract_to_dir_times_every_stage(tmp_path, media, tower):
    timings: dict[str, float] = {}
    extract_to_dir(tower, media, tmp_path / "feats", transform=TF, timings=timings, shard_size=3, batch_size=2)
    assert set(timings) == {"startup", "wait_for_data", "decode", "transform", "copy", "forward", "write_shards",
                            "wait_for_writer"}  # fmt: skip
    assert all(v >= 0 for v in timings.values()) and timings["decode"] > 0 and timings["forward"] > 0
    assert timings["write_shards"] > 0


class _PidRecordingSampler:
    """Uniform sampling that notes which process decoded each source (a file per process id)."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, metadata, rng=None):
        (self.folder / str(os.getpid())).touch()
        return UniformSampler(2, short_policy="fewer")(metadata, rng)


def test_workers_share_one_encoder_batch(tmp_path, media, tower):
    """Each worker decodes single sources: a batch of 4 sources with 2 workers keeps both busy (one worker used to
    decode the whole batch while the other waited)."""
    videos = sorted(str(p) for p in media.glob("*.mp4") if p.name != "broken.mp4")
    got = extract_features(tower, videos, sampler=_PidRecordingSampler(tmp_path), transform=TF, batch_size=4,
                           num_workers=2, worker_start="fork")  # fmt: skip
    assert [r.source for r in got] == videos and all(r.ok for r in got)
    assert len(list(tmp_path.iterdir())) == 2 and str(os.getpid()) not in {p.name for p in tmp_path.iterdir()}
    ref = extract_features(tower, videos, sampler=2, transform=TF, batch_size=4)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)


def test_text_features_ask_the_declared_ability(tower):
    from vidvlm.models.base import EMBED_VIDEO, VLMModel

    class VideoOnly(VLMModel):  # inherits VLMModel.encode_text (which raises): hasattr said it could embed text
        abilities = frozenset({EMBED_VIDEO})

    with pytest.raises(ConfigError, match="cannot embed text \\(needed to extract text features\\)"):
        extract_text_features(VideoOnly(None), ["a red square"])
    with pytest.raises(ConfigError, match="VideoViT is not a vidvlm family"):
        extract_text_features(tower, ["a red square"])
