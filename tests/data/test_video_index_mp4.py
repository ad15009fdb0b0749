"""Opening an MP4 from its sample table gives exactly the index a full demux gives, or falls back to the demux."""

from __future__ import annotations

import dataclasses

import av
import numpy as np
import pytest
from corpus import read_index, write_video
from test_video_encodings import write_edit_list
from test_video_streams import write_two_streams

from vidvlm.data import _index_cache, _index_mp4, _pyav
from vidvlm.data.video import open_video

BFRAMES = {"g": "10", "bf": "3"}


def demux_index(path: str, stream: int | None, monkeypatch) -> _pyav.FrameIndex:
    """The index built by demuxing every packet (the table reader switched off)."""
    with monkeypatch.context() as m:
        m.setattr(_index_mp4, "read", lambda *args: None)
        _index_cache.clear_memory()
        return open_video(path, stream=stream, index_cache="")._index


def table_index(path: str, stream: int | None) -> _pyav.FrameIndex:
    _index_cache.clear_memory()
    return open_video(path, stream=stream, index_cache="")._index


def assert_same_index(a: _pyav.FrameIndex, b: _pyav.FrameIndex) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y, field.name


def table_of(path: str, stream: int = 0) -> _index_mp4.SampleTable | None:
    with av.open(path) as container:
        return _index_mp4.read(path, container, container.streams[stream])


@pytest.fixture(scope="module")
def mp4s(tmp_path_factory, corpus) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mp4")
    w = lambda name, n, **kw: write_video(str(d / f"{name}.mp4"), "libx264", n, **kw)  # noqa: E731
    return {
        "h264": corpus["h264"],
        "rot90": corpus["rot90"],
        "one": corpus["one"],
        "two_streams": write_two_streams(str(d / "two.mp4"), default=1),
        "faststart": w("faststart", 50, options=BFRAMES, container_options={"movflags": "faststart"}),
        "short": w("short", 16, options=BFRAMES),  # <= _HEAD_PACKETS: checked in one pass from the start
        "negative_cts": w("negcts", 50, options=BFRAMES, container_options={"movflags": "negative_cts_offsets"}),
        "hevc_10bit": write_video(
            str(d / "hevc.mp4"),
            "libx265",
            30,
            options={"x265-params": "keyint=8:log-level=error"},
            pix_fmt="yuv420p10le",
        ),
        "fragmented": w("frag", 50, options=BFRAMES, container_options={"movflags": "frag_keyframe+empty_moov"}),
        "edit_list": write_edit_list(str(d / "edit.mp4"), str(d / "edit_source.mp4")),
    }


@pytest.mark.parametrize(
    "name,stream,from_table",
    [
        ("h264", None, True),
        ("rot90", None, True),
        ("one", None, True),
        ("two_streams", 0, True),
        ("two_streams", 1, True),
        ("faststart", None, True),
        ("short", None, True),
        ("negative_cts", None, True),
        ("hevc_10bit", None, True),
        ("fragmented", None, False),  # no sample table in moov: demuxed
        ("edit_list", None, False),  # packets flagged for discarding at the start: demuxed
    ],
)
def test_table_index_is_the_demux_index(mp4s, name, stream, from_table, monkeypatch):
    path = mp4s[name]
    chosen = stream if stream is not None else 0
    assert (table_of(path, chosen) is not None) == from_table
    assert_same_index(table_index(path, stream), demux_index(path, stream, monkeypatch))
    with open_video(path, stream=stream) as video:
        n = video.metadata.num_frames
        picks = [n - 1, 0, n // 2]
        first = 100 if (name, stream) == ("two_streams", 1) else (5 if name == "edit_list" else 0)
        assert [read_index(f.numpy()) for f in video.get_frames(picks)] == [first + i for i in picks]


@pytest.mark.parametrize("name", ["h264", "short"])
def test_a_table_that_does_not_match_the_packets_is_not_used(mp4s, name, monkeypatch):
    """The tables are checked against real packets: one wrong size near the end sends the file to the demux (in the
    last GOP of a long track, found by the tail check; anywhere in a short one, found by the single pass)."""
    assert _index_mp4._HEAD_PACKETS < 75  # the 75-frame h264 clip goes through the tail check
    original = _index_mp4._sample_tables

    def lying(f, stbl):
        deltas, offsets, sizes, sync, end = original(f, stbl)
        sizes = sizes.copy()
        sizes[-2] += 1
        return deltas, offsets, sizes, sync, end

    monkeypatch.setattr(_index_mp4, "_sample_tables", lying)
    assert table_of(mp4s[name]) is None
    assert_same_index(table_index(mp4s[name], None), demux_index(mp4s[name], None, monkeypatch))


def test_a_short_track_is_demuxed_once(mp4s, monkeypatch):
    """A track of at most _HEAD_PACKETS samples needs no tail check: the head pass already read every packet."""
    calls = []
    original = _index_mp4._check_tail
    monkeypatch.setattr(_index_mp4, "_check_tail", lambda *a: calls.append(1) or original(*a))
    assert table_of(mp4s["short"]) is not None and calls == []
    assert table_of(mp4s["h264"]) is not None and calls == [1]


def test_truncated_mp4_falls_back_to_the_demux(tmp_path):
    """moov at the front, data cut: the last GOP cannot be read, so the table is not trusted (and the existing tail
    decode decides how many frames are real)."""
    path = write_video(
        str(tmp_path / "full.mp4"), "libx264", 60, options=BFRAMES, container_options={"movflags": "faststart"}
    )
    with open(path, "rb") as f:
        data = f.read()
    cut = str(tmp_path / "cut.mp4")
    with open(cut, "wb") as f:
        f.write(data[: int(len(data) * 0.8)])
    assert table_of(cut) is None
    _index_cache.clear_memory()
    with open_video(cut) as video:
        n = video.metadata.num_frames
        assert 0 < n < 60
        assert [read_index(f.numpy()) for f in video.get_frames([n - 1, 0])] == [n - 1, 0]
