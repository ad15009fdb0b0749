"""vidvlm.atomic: an output is the old one or the new one, whole, whatever stops the writer."""

import os
import stat

import pytest

from vidvlm import atomic


def _mode(path) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def test_write_text_atomic_writes_whole_file_with_plain_mode(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    atomic.write_text_atomic(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(target.stat().st_mode) == _mode(target)  # not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_a_writer_that_dies_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "answers.jsonl"
    target.write_text("old\n")

    def dies_half_way(tmp):
        tmp.write_text("half of the new")
        raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(target, dies_half_way)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]


def test_two_writers_of_one_file_each_use_their_own_temporary(tmp_path):
    """A second writer that starts and finishes while the first is writing: each rename is whole, the last wins."""
    target = tmp_path / "manifest.jsonl"

    def slow_writer(tmp):
        tmp.write_text("first\n")
        atomic.write_text_atomic(target, "second\n")  # the other process, meanwhile
        assert tmp.read_text() == "first\n"  # its temporary was not ours

    atomic.write_atomic(target, slow_writer)
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]


def test_publish_dir_replaces_a_directory_whole(tmp_path):
    out = tmp_path / "lm"
    out.mkdir()
    (out / "config.json").write_text("old")
    (out / "stale.bin").write_text("only in the old one")
    tmp = atomic.staging_dir(out)
    assert tmp.parent == tmp_path and tmp.name.startswith(".lm.") and not any(tmp.iterdir())
    (tmp / "config.json").write_text("new")
    os.chmod(tmp / "config.json", 0o600)
    atomic.publish_dir(tmp, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    assert (out / "config.json").read_text() == "new"
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == _mode(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]


def test_replace_dir_fallback_is_recovered(tmp_path, monkeypatch):
    target, new = tmp_path / "final", tmp_path / "tmp-final"
    target.mkdir()
    (target / "w").write_text("old")
    new.mkdir()
    (new / "w").write_text("new")
    atomic.replace_dir(new, target)  # the atomic exchange where the platform has it
    assert (target / "w").read_text() == "new" and not new.exists()

    # without an exchange: final -> old-final, tmp-final -> final; a crash between the two renames is recovered
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    new.mkdir()
    (new / "w").write_text("newer")
    real_rename = type(new).rename

    def crash_on_second(self, dest):
        if self.name == "tmp-final":
            raise KeyboardInterrupt("killed between the renames")
        return real_rename(self, dest)

    monkeypatch.setattr(type(new), "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_dir(new, target)
    monkeypatch.undo()
    assert not target.exists()
    atomic.recover_dir(target)
    assert (target / "w").read_text() == "new"
