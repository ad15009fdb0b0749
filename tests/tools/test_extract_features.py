"""tools/extract_features.py and tools/search_features.py end to end on a tiny contrastive checkpoint: the CLI gives
the API's features whatever the batch size and worker count, resumes, reads file lists and manifests, lists
unreadable files with their reason, and the search ranks videos by cosine with the text query."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vidvlm.data.synthetic import make_synthetic
from vidvlm.extract import extract_features, extract_text_features, load_features, read_index
from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract_cli = _tool("extract_features")
search_cli = _tool("search_features")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    media = root / "media"
    manifest = make_synthetic(media, 4, seed=1, frames=10, size=32)
    make_synthetic(media, 1, seed=1, size=32, images=True, split="val", manifest_name="images.jsonl")
    (media / "images.jsonl").unlink()
    (media / "zz_corrupt.mp4").write_bytes(b"\x1a\x45\xdf\xa3" + os.urandom(100))
    torch.manual_seed(0)
    model = ContrastiveModel(ContrastiveConfig.tiny())
    model.prepare_for_training([json.loads(line)["caption"] for line in manifest.read_text().splitlines()])
    model.save_pretrained(root / "ckpt")
    return root, media, manifest


def _assert_same(api, stored):
    assert [r.source for r in stored] == [r.source for r in api]
    for a, b in zip(api, stored, strict=True):
        assert a.error == b.error
        if a.ok:
            torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a.timestamps, b.timestamps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("level", ["pooled", "frames"])
def test_cli_matches_api_across_batch_and_workers(setup, tmp_path, capsys, level):
    root, media, _ = setup
    ckpt = str(root / "ckpt")
    api = extract_features(ckpt, media, level=level, sampler=4, batch_size=16, num_workers=0)
    argv = [str(media), "--model", ckpt, "--level", level, "--num-frames", "4", "--no-progress"]
    # pooled: one worker started the default way (forkserver, slow to start); frames: two forked workers.
    workers = ["--num-workers", "1"] if level == "pooled" else ["--num-workers", "2", "--worker-start", "fork"]
    # exit 1: the corrupt file failed (the folder's manifest.jsonl is not a source); everything else is written
    assert extract_cli.main([*argv, "--out", str(tmp_path / "a"), "--batch-size", "1", *workers]) == 1
    out = capsys.readouterr()
    assert "done 5, skipped 0, failed 1" in out.out and "1 source(s) failed" in out.err
    _assert_same(api, load_features(tmp_path / "a"))
    assert extract_cli.main([*argv, "--out", str(tmp_path / "a"), "--shard-size", "2"]) == 0
    assert "done 0, skipped 6, failed 0" in capsys.readouterr().out


def test_cli_file_list_manifest_and_failures(setup, tmp_path, capsys):
    root, media, manifest = setup
    listing = root / "list.txt"  # a list names files under its own folder: relative, or absolute inside it
    rel = media.relative_to(root)
    listing.write_text(f"{media / 'train_00000.mp4'}\n{rel / 'missing.mp4'}\n{rel / 'zz_corrupt.mp4'}\n")
    out = tmp_path / "out"
    code = extract_cli.main([str(listing), str(manifest), "--out", str(out), "--model", str(root / "ckpt"),
                             "--num-workers", "0", "--shard-size", "2", "--no-progress"])  # fmt: skip
    assert code == 1  # two sources failed
    index = read_index(out)
    assert [Path(e["source"]).name for e in index if "shard" in e] == [f"train_0000{i}.mp4" for i in range(4)]
    errors = {Path(e["source"]).name: e["error"] for e in index if "error" in e}
    assert set(errors) == {"missing.mp4", "zz_corrupt.mp4"}
    assert "does not exist" in errors["missing.mp4"]
    assert len(list(out.glob("*.safetensors"))) == 3  # [train0, missing] [corrupt, train1] [train2, train3]
    for e in index:
        if "shard" in e:
            assert e["rows"][1] - e["rows"][0] == 1 and len(e["timestamps"]) == 8
    assert "failed 2" in capsys.readouterr().out


def test_cli_reports_bad_model(setup, tmp_path, capsys):
    _, media, _ = setup
    assert extract_cli.main([str(media), "--out", str(tmp_path / "o"), "--model", str(tmp_path)]) == 2
    assert "not a vidvlm checkpoint" in capsys.readouterr().err


def test_search_ranks_by_cosine(setup, tmp_path, capsys):
    root, media, manifest = setup
    ckpt = str(root / "ckpt")
    out = tmp_path / "feats"
    assert extract_cli.main([str(manifest), "--out", str(out), "--model", ckpt, "--no-progress"]) == 0
    capsys.readouterr()
    query = json.loads(manifest.read_text().splitlines()[2])["caption"]
    assert search_cli.main([str(out), query, "--model", ckpt, "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    # The same ranking computed by hand from the API.
    api = [r for r in extract_features(ckpt, manifest) if r.ok]
    scores = F.normalize(torch.stack([r.features for r in api]), dim=-1) @ extract_text_features(ckpt, [query])[0]
    best = scores.argsort(descending=True)[:3].tolist()
    assert [line.split()[-1] for line in lines] == [api[i].source for i in best]
    assert float(lines[0].split()[1]) == pytest.approx(scores[best[0]].item(), abs=1e-4)
    with pytest.raises(SystemExit):
        search_cli.main([str(out)])  # the query is required


HOLD_LOCK = """
import sys
from pathlib import Path
from vidvlm.extract.shards import extraction_lock
Path(sys.argv[1]).mkdir()
lock = extraction_lock(Path(sys.argv[1]))  # what a running extract_features.py holds
print("locked", flush=True)
sys.stdin.read()  # hold the directory until the test closes our stdin (or kills us)
"""


def test_second_writer_into_one_folder_is_refused_and_a_killed_holder_frees_it(setup, tmp_path, capsys):
    """Two runs into one --out corrupted it silently (both wrote shard-00000...). Now the folder is locked by the
    first writer (another process here), the second run refuses naming the holder, and a killed holder frees it."""
    root, media, _ = setup
    out = tmp_path / "shared"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = [str(media / "train_00000.mp4"), "--out", str(out), "--model", str(root / "ckpt"), "--num-workers",
                "0", "--no-progress"]  # fmt: skip
        assert extract_cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another extraction is writing into this directory" in err
        assert f"pid {holder.pid} on {socket.gethostname()}" in err
        assert not (out / "index.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait()
    assert extract_cli.main(argv) == 0
    assert [Path(e["source"]).name for e in read_index(out)] == ["train_00000.mp4"]


def test_out_naming_a_file_and_custom_code_model_are_one_line_errors(setup, tmp_path, capsys):
    root, media, _ = setup
    existing = tmp_path / "features.bin"
    existing.write_bytes(b"data")
    assert extract_cli.main([str(media), "--out", str(existing), "--model", str(root / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "features.bin: the output must be a directory" in err
    assert existing.read_bytes() == b"data"
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "clip", "auto_map": {"AutoModel": "m.M"}}))
    assert extract_cli.main([str(media), "--out", str(tmp_path / "o"), "--model", str(custom)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs custom code" in err and "trust_remote_code stays off" in err
