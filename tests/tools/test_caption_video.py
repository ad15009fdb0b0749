"""tools/caption_video.py end to end on generated videos: formats, segments, contact sheet, bad files, the default."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidvlm.captioning import DEFAULT_MODEL_DIR, Captioner, caption
from vidvlm.data.synthetic import make_synthetic
from vidvlm.errors import ConfigError
from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel
from vidvlm.models.generative import CoCaCaptioner, GenerativeConfig

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("caption_video", ROOT / "tools" / "caption_video.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    make_synthetic(d, 3, seed=7, frames=16, size=32, split="test", fps=8)
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model") / "tiny"
    model = CoCaCaptioner(GenerativeConfig.tiny(answers_questions=True))  # as if trained on question-answer data
    model.prepare_for_training([])  # a tokenizer of the synthetic vocabulary
    model.save_pretrained(d)
    return d


def test_text_and_json_many_files(clips, model_dir, capsys):
    rc = cli.main([str(clips), "--model", str(model_dir), "--format", "json", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(line) for line in out.out.strip().splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["test_00000.mp4", "test_00001.mp4", "test_00002.mp4"]
    assert all(len(r["segments"]) == 1 and isinstance(r["segments"][0]["text"], str) for r in rows)
    assert "synthetic" not in out.err  # the note is only for the embedded default


def test_segments_srt_vtt_and_contact_sheet(clips, model_dir, tmp_path, capsys):
    clip = clips / "test_00000.mp4"  # 16 frames at 8 fps = 2 s
    sheet = tmp_path / "sheet.png"
    rc = cli.main(
        [
            str(clip),
            "--model",
            str(model_dir),
            "--segment",
            "1",
            "--format",
            "srt",
            "--contact-sheet",
            str(sheet),
            "--beam",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "1\n00:00:00,000 --> 00:00:01,000\n" in out and "2\n00:00:01,000 --> 00:00:02,000\n" in out
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width >= 4 * 128 and im.height > 2 * 128  # 4 frames per segment, two rows
    rc = cli.main([str(clip), "--model", str(model_dir), "--segment", "1", "--format", "vtt", "--num-frames", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n")


def test_bad_file_among_good_ones(clips, model_dir, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 20)
    missing = tmp_path / "missing.mp4"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "caption_video.py"),
        str(clips / "test_00000.mp4"),
        str(bad),
        str(missing),
        str(clips / "test_00001.mp4"),
        "--model",
        str(model_dir),
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    lines = res.stdout.strip().splitlines()
    assert [Path(line.split("\t")[0]).name for line in lines] == ["test_00000.mp4", "test_00001.mp4"]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and str(bad) in errors[0] and str(missing) in errors[1]
    assert "2 of 4 file(s) failed" in res.stderr


def test_bad_model_dir_is_one_line(tmp_path, capsys):
    rc = cli.main([str(tmp_path), "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "nope" in err


def test_python_api_matches_cli(clips, model_dir, capsys):
    segs = caption(model_dir, clips / "test_00002.mp4", question="what color is it")
    assert len(segs) == 1 and segs[0].end == pytest.approx(2.0)
    cli.main([str(clips / "test_00002.mp4"), "--model", str(model_dir), "--question", "what color is it"])
    assert capsys.readouterr().out.rstrip("\n").split("\t")[1:] == [segs[0].text]


def test_a_model_trained_on_captions_only_says_it_cannot_answer(clips, capsys):
    """The embedded default never saw a question: it says so, instead of printing an empty or made-up answer."""
    rc = cli.main([str(clips / "test_00002.mp4"), "--question", "what color is it", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 1 and not out.out.strip()
    assert "trained on captions only, so it cannot answer questions" in out.err


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), reason="no embedded default model")
def test_default_model_captions_held_out_clips(tmp_path, capsys):
    manifest = make_synthetic(tmp_path, 6, seed=987654, frames=8, size=32, split="test")
    truth = {json.loads(line)["path"]: json.loads(line)["caption"] for line in manifest.read_text().splitlines()}
    image = make_synthetic(tmp_path / "img", 1, seed=5, size=32, images=True)
    rc = cli.main([str(tmp_path / p) for p in truth] + [str(image.parent / "train_00000.png"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0 and "synthetic moving shapes only" in out.err
    got = dict(line.split("\t") for line in out.out.strip().splitlines())
    # held-out clips (a seed no training run used) are captioned exactly: colour, size, shape and motion direction
    for p, c in truth.items():
        assert got[str(tmp_path / p)] == c
    # a still gets its exact, motion-free caption
    still = json.loads(image.read_text().splitlines()[0])["caption"]
    assert got[str(image.parent / "train_00000.png")] == still and "moves" not in still


# every setting the README demo and the generator make: sizes 32 to 128, 4 to 32 frames, other frame rates, stills
GENERATOR_RANGE = [
    {"frames": 16, "size": 64},  # make_synthetic.py's defaults (the README demo)
    {"frames": 12, "size": 48, "fps": 12},
    {"frames": 32, "size": 128, "fps": 24},
    {"frames": 4, "size": 32},
    {"images": True, "size": 32},
    {"images": True, "size": 96},
]


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.safetensors").is_file(), reason="no embedded default model")
@pytest.mark.parametrize("setting", GENERATOR_RANGE, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_default_model_reads_every_setting_of_the_generator(tmp_path, capsys, setting):
    # 16 held-out items per setting (a seed no training run used); BENCHMARKS.md has 100 per setting
    manifest = make_synthetic(tmp_path, 16, seed=246810, split="test", **setting)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rc = cli.main([str(tmp_path / r["path"]) for r in rows] + ["--no-progress"])
    got = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    exact = sum(got[str(tmp_path / r["path"])] == r["caption"] for r in rows)
    assert rc == 0 and exact >= 15, f"{exact} of 16 exact"


def test_num_frames_and_segment_zero_are_one_line_errors(clips, model_dir, capsys):
    # it used to fall back silently to the model's frame count ("0 or default")
    rc = cli.main([str(clips / "test_00000.mp4"), "--model", str(model_dir), "--num-frames", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: --num-frames must be >= 1, got 0\n"
    rc = cli.main([str(clips / "test_00000.mp4"), "--model", str(model_dir), "--segment", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: --segment must be a number of seconds > 0, got 0.0\n"
    with pytest.raises(ConfigError, match="num_frames: must be >= 1, got 0"):
        Captioner(model_dir, num_frames=0)


def test_unwritable_contact_sheet_is_reported_and_the_other_files_go_on(clips, model_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    files = [str(clips / "test_00000.mp4"), str(clips / "test_00001.mp4")]
    rc = cli.main([*files, "--model", str(model_dir), "--contact-sheet", str(blocker / "sheet.png"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out.err
    assert [Path(line.split("\t")[0]).name for line in out.out.strip().splitlines()] == ["test_00000.mp4",
                                                                                       "test_00001.mp4"]  # fmt: skip
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all("cannot write the contact sheet" in e and "a_file" in e for e in errors)
    assert "2 of 2 file(s) failed" in out.err


def test_a_family_that_cannot_generate_is_refused(tmp_path, clips, capsys):
    torch.manual_seed(0)
    ContrastiveModel(ContrastiveConfig.tiny()).save_pretrained(tmp_path / "clip")
    with pytest.raises(ConfigError, match="family 'contrastive' cannot generate text \\(needed to caption videos\\)"):
        Captioner(tmp_path / "clip")
    assert cli.main([str(clips), "--model", str(tmp_path / "clip")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_windows_are_decoded_at_model_size_captioned_in_bounded_batches_and_streamed(tmp_path, model_dir):
    """A long video used to be decoded at full size and captioned as one batch of every window."""
    make_synthetic(tmp_path, 1, seed=3, frames=48, size=64, fps=8)  # 6 s at 64x64; the model takes 32x32
    path = tmp_path / "train_00000.mp4"
    cap = Captioner(model_dir, batch_size=3)
    batches: list[int] = []
    generate = cap.model.generate

    def spy(video, *args, **kwargs):
        batches.append(video.shape[0])
        return generate(video, *args, **kwargs)

    cap.model.generate = spy
    stream = cap.iter_segments(path, segment=0.5)
    first, frames = next(stream)
    assert batches == [3] and (first.start, first.end) == (0.0, 0.5)  # the first batch is out before the rest
    assert frames.shape[-2:] == (32, 32) and frames.dtype == torch.uint8
    rest = list(stream)
    assert batches == [3, 3, 3, 3] and len(rest) == 11
    one_batch = Captioner(model_dir, batch_size=100)
    assert [s.text for s in one_batch.caption_file(path, segment=0.5)[0]] == [first.text] + [s.text for s, _ in rest]


def test_manifest_is_a_list_of_sources(clips, model_dir, capsys):
    assert cli.main([str(clips / "manifest.jsonl"), "--model", str(model_dir), "--no-progress"]) == 0
    names = [Path(line.split("\t")[0]).name for line in capsys.readouterr().out.strip().splitlines()]
    assert names == ["test_00000.mp4", "test_00001.mp4", "test_00002.mp4"]
