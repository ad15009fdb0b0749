"""The frame index cache: a reopened file is not indexed again; a changed file, a stale or damaged entry always is."""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import shutil
import zipfile

import av
import numpy as np
import pytest
from corpus import read_index, write_video

from vidvlm.data import _index_cache, _pyav
from vidvlm.data.video import open_video


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """Counts real indexing passes (paths given to ``build_index``), starting from an empty in-process cache."""
    _index_cache.clear_memory()
    monkeypatch.delenv(_index_cache.ENV, raising=False)
    calls: list[str] = []
    original = _pyav.build_index

    def spy(path, container, stream_index):
        calls.append(path)
        return original(path, container, stream_index)

    monkeypatch.setattr(_pyav, "build_index", spy)
    yield calls
    _index_cache.clear_memory()


@pytest.fixture
def clip(tmp_path) -> str:
    return write_video(str(tmp_path / "clip.mp4"), "libx264", 40, options={"g": "10", "bf": "2"})


def frames_of(path: str, **kwargs) -> tuple[object, list[int]]:
    with open_video(path, **kwargs) as video:
        n = video.metadata.num_frames
        return video.metadata, [read_index(f.numpy()) for f in video.get_frames([n - 1, 0, n // 2])]


def test_reopening_uses_the_kept_index(builds, clip, corpus):
    first = frames_of(clip)
    assert frames_of(clip) == first and frames_of(clip, backend="decord")[1] == first[1]
    os.symlink(clip, clip + ".link.mp4")
    link_meta, link_frames = frames_of(clip + ".link.mp4")  # another name of the same file shares the entry
    assert link_frames == first[1] and link_meta.num_frames == first[0].num_frames
    assert builds == [clip]


@pytest.mark.parametrize("name,demuxer", [("h264", "mov"), ("vp9", "matroska"), ("mpeg4", "avi"), ("vfr", "matroska")])
def test_a_reopened_file_skips_the_format_probe(builds, corpus, name, demuxer, monkeypatch):
    """The decoder of an indexed file is opened with the demuxer its index names (no probe): same frames."""
    first = frames_of(corpus[name])
    formats = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: formats.append(k.get("format")) or real_open(*a, **k))
    assert frames_of(corpus[name]) == first and formats == [demuxer]


def test_a_wrong_demuxer_name_falls_back_to_probing(corpus):
    container, _ = _pyav.open_container(corpus["h264"], 1, None, "matroska,webm")
    with container:
        assert container.format.name.startswith("mov")


def test_a_changed_file_is_indexed_again(builds, clip, tmp_path):
    assert frames_of(clip)[0].num_frames == 40
    longer = write_video(str(tmp_path / "longer.mp4"), "libx264", 55, options={"g": "10", "bf": "2"})
    os.replace(longer, clip)
    meta, frames = frames_of(clip)
    assert meta.num_frames == 55 and frames == [54, 0, 27]
    # Same bytes put back with the old mtime: the ctime still differs, so it is not trusted either.
    st = os.stat(clip)
    shutil.copyfile(clip, clip + ".tmp")
    os.replace(clip + ".tmp", clip)
    os.utime(clip, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert frames_of(clip)[0].num_frames == 55
    assert builds == [clip] * 3


def test_disk_cache_serves_a_new_process(builds, clip, tmp_path):
    cache = str(tmp_path / "cache")
    first = frames_of(clip, index_cache=cache)
    (entry,) = glob.glob(os.path.join(cache, "*.npz"))
    with np.load(entry, allow_pickle=False) as data:  # plain arrays and a JSON string: loads without pickle
        assert json.loads(str(data["meta"]))["stamp"]["path"] == os.path.realpath(clip)
    _index_cache.clear_memory()  # what a new process (a DataLoader worker, the next epoch) starts with
    assert frames_of(clip, index_cache=cache) == first
    assert builds == [clip]
    assert not glob.glob(os.path.join(cache, ".index-*"))  # no temporary file left behind


def test_environment_names_the_cache(builds, clip, tmp_path, monkeypatch):
    monkeypatch.setenv(_index_cache.ENV, str(tmp_path / "env_cache"))
    frames_of(clip)
    assert len(glob.glob(str(tmp_path / "env_cache" / "*.npz"))) == 1
    _index_cache.clear_memory()
    frames_of(clip, index_cache="")  # "" turns the disk cache off even when the variable is set
    assert len(builds) == 2


def damage_truncate(entry: str) -> None:
    with open(entry, "r+b") as f:
        f.truncate(os.path.getsize(entry) // 2)


def damage_flip_byte(entry: str) -> None:
    with open(entry, "r+b") as f:
        f.seek(60)
        byte = f.read(1)
        f.seek(60)
        f.write(bytes([byte[0] ^ 0xFF]))


def rewrite(entry: str, **changes) -> None:
    """Saves the entry again with some members replaced (a well-formed file whose content lies)."""
    with np.load(entry, allow_pickle=False) as data:
        members = {k: data[k] for k in data.files}
    members.update(changes)
    np.savez(entry, **members)


def damage_shift_pts(entry: str) -> None:
    with np.load(entry) as data:
        rewrite(entry, pts=data["pts"] + 512)


def damage_pickle(entry: str) -> None:
    rewrite(entry, pts=np.array([{"evil": 1}], dtype=object))  # would need unpickling: must never be loaded


def damage_other_stamp(entry: str) -> None:
    with np.load(entry) as data:
        meta = json.loads(str(data["meta"]))
    meta["stamp"]["size"] += 1
    rewrite(entry, meta=np.array(json.dumps(meta)))


def damage_not_a_zip(entry: str) -> None:
    with open(entry, "w") as f:
        f.write("{}")


@pytest.mark.parametrize(
    "damage",
    [damage_truncate, damage_flip_byte, damage_shift_pts, damage_pickle, damage_other_stamp, damage_not_a_zip],
)
def test_a_damaged_entry_is_rebuilt_not_trusted(builds, clip, tmp_path, damage):
    cache = str(tmp_path / "cache")
    first = frames_of(clip, index_cache=cache)
    (entry,) = glob.glob(os.path.join(cache, "*.npz"))
    damage(entry)
    _index_cache.clear_memory()
    assert frames_of(clip, index_cache=cache) == first
    assert builds == [clip, clip]
    _index_cache.clear_memory()
    assert frames_of(clip, index_cache=cache) == first  # the rebuilt entry was written back, whole
    assert builds == [clip, clip]


def test_unwritable_cache_warns_and_still_opens(builds, clip, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the video index cache"):
        assert frames_of(clip, index_cache=str(blocker / "cache"))[1] == [39, 0, 20]


def _open_many(paths: list[str], cache: str, rounds: int) -> None:
    for _ in range(rounds):
        for path in paths:
            _index_cache.clear_memory()
            with open_video(path, index_cache=cache) as video:
                video.get_frames([0])


def test_concurrent_writers_leave_whole_entries(corpus, tmp_path):
    """Two processes index the same files into one folder at once: every entry left is whole and right."""
    cache = str(tmp_path / "shared_cache")
    names = ["h264", "vp9", "hevc", "vfr", "rot90", "mpeg4"]
    paths = [corpus[n] for n in names]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_open_many, args=(paths[::step], cache, 6)) for step in (1, -1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(glob.glob(os.path.join(cache, "*.npz"))) == len(names)
    assert not glob.glob(os.path.join(cache, ".index-*"))
    _index_cache.clear_memory()
    for path in paths:
        stamp = _index_cache.Stamp.of(path, None, os.stat(path))
        entry = _index_cache._entry_path(cache, stamp)
        with zipfile.ZipFile(entry) as z:
            assert z.testzip() is None  # every member's CRC holds
        cached = _index_cache._read(entry, stamp)
        fresh = open_video(path, index_cache="")._index
        assert cached is not None and np.array_equal(cached.pts, fresh.pts)
        assert np.array_equal(cached.keyframes, fresh.keyframes) and cached.complete == fresh.complete
