"""Real-world encodings the tests write themselves: 10-bit H.264 and HEVC, full-range BT.709, AV1, edit lists.

Frames show their own index (``corpus.py``) in two grey levels, so a frame's position and its levels (a wrong colour
range moves them by 8 to 13) are both checked, with each backend.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from corpus import H, W, pattern, read_index, write_video

from vidvlm.data import _pyav
from vidvlm.data.video import open_video
from vidvlm.errors import VideoDecodeError

DARK, LIGHT = 50, 200
N = 24


def grey_pattern(i: int) -> np.ndarray:
    return np.where(pattern(i) > 0, LIGHT, DARK).astype(np.uint8)


def write_grey(path: str, codec: str, pix_fmt: str, options: dict[str, str], full_range_709: bool = False) -> str:
    """``N`` grey-pattern frames; ``full_range_709`` converts and flags them as full-range BT.709."""
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        if full_range_709:
            ctx = stream.codec_context
            ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 2, 1, 1, 1
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(grey_pattern(i), format="rgb24")
            if full_range_709:
                frame = frame.reformat(format=pix_fmt, dst_colorspace="ITU709", dst_color_range="JPEG")
                frame.color_range, frame.colorspace = 2, 1
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


AV1_ENCODER = next((e for e in ("libsvtav1", "libaom-av1", "librav1e") if has_encoder(e)), None)
AV1_OPTIONS = {"g": "8", "preset": "12", "svtav1-params": "log-level=0"} if AV1_ENCODER == "libsvtav1" else {"g": "8"}
# name -> (encoder, pix_fmt, options, full range BT.709, backend that serves a decord request)
ENCODINGS = {
    "h264_10bit": ("libx264", "yuv420p10le", {"g": "8", "bf": "2"}, False, "decord"),
    "hevc_10bit": ("libx265", "yuv420p10le", {"x265-params": "keyint=8:bframes=2:log-level=error"}, False, "pyav"),
    "h264_full_range_bt709": ("libx264", "yuv420p", {"g": "8", "bf": "2"}, True, "decord"),
    "av1": (AV1_ENCODER, "yuv420p", AV1_OPTIONS, False, "pyav"),
}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("encodings")
    files = {}
    for name, (encoder, pix_fmt, options, full, _) in ENCODINGS.items():
        if encoder is not None:
            files[name] = write_grey(str(d / f"{name}.mkv"), encoder, pix_fmt, options, full)
    return files


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("name", list(ENCODINGS))
def test_encoding_decodes_exactly(encoded, name, backend):
    if name not in encoded:
        pytest.skip(f"this FFmpeg has no {name} encoder (libsvtav1, libaom-av1 or librav1e)")
    with open_video(encoded[name], backend=backend) as video:
        m = video.metadata
        assert (m.num_frames, m.width, m.height) == (N, W, H)
        # decord lacks AV1 ("cannot open the file") and is wrong on HEVC: PyAV serves those, and says so.
        assert m.backend == (ENCODINGS[name][4] if backend == "decord" else "pyav")
        picks = [N - 1, 5, 0, 13, 13]
        frames = video.get_frames(picks)
        assert [read_index(f.numpy()) for f in frames] == picks
        for frame, i in zip(frames, picks, strict=True):
            # Compare block centres: colour range or matrix errors move these levels; chroma edges are lossy.
            want = grey_pattern(i)[8::16, 8::16].astype(int)
            got = frame.permute(1, 2, 0).numpy()[8::16, 8::16].astype(int)
            assert np.abs(got - want).max() <= 4, (name, backend, i)


def write_edit_list(path: str, tmp: str, cut: int = 5) -> str:
    """Remuxes a 30-frame H.264 clip (GOP 10, B-frames) shifted so that its first ``cut`` frames fall before 0:
    the MP4 muxer writes an edit list that starts the presentation at frame ``cut`` (what ``ffmpeg -ss 0.2 -c copy``
    makes). Those packets are still in the file, flagged for discarding: they decode as references but are never
    shown, so the video has 30 - cut frames, the first showing index ``cut``."""
    source = write_video(tmp, "libx264", 30, options={"g": "10", "bf": "2"})
    with av.open(source) as src, av.open(path, "w") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        step = int(1 / (stream.time_base * stream.average_rate))
        for packet in src.demux(stream):
            if packet.dts is None:
                continue  # the flush packet
            packet.pts -= cut * step
            packet.dts -= cut * step
            packet.stream = copy
            out.mux(packet)
    return path


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_edit_list_frames_before_the_start_are_not_frames(tmp_path, backend):
    path = write_edit_list(str(tmp_path / "edit.mp4"), str(tmp_path / "source.mp4"))
    with open_video(path, backend=backend) as video:
        m = video.metadata
        assert m.num_frames == 25 and m.timestamps[0] == 0.0 and m.duration == pytest.approx(1.0)
        assert m.backend == "pyav"  # decord counts the discarded frames and returns shifted ones
        picks = [24, 0, 1, 12, 24]
        assert [read_index(f.numpy()) for f in video.get_frames(picks)] == [5 + i for i in picks]
        assert [read_index(f.numpy()) for f in video.get_frames_at([0.0, 0.99])] == [5, 29]


# MPEG-TS has no sample table: FFmpeg seeks it by bisecting on the clock it meets in the bytes (decode times, behind
# the presentation times by the muxer's delay) and lands a GOP or more past the keyframe asked for. Two codecs, GOPs of
# 12 with B-frames, long enough that the last GOPs lie several seconds in.
TS_ENCODINGS = {
    "h264": ("libx264", {"g": "12", "bf": "3", "sc_threshold": "0"}),
    "mpeg2": ("mpeg2video", {"g": "12", "bf": "2", "qscale": "2"}),
}
TS_FRAMES = 250  # read_index counts to 255


@pytest.fixture(scope="module")
def transport_streams(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mpegts")
    return {
        name: write_video(str(d / f"{name}.ts"), codec, TS_FRAMES, options=options)
        for name, (codec, options) in TS_ENCODINGS.items()
    }


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("name", list(TS_ENCODINGS))
def test_mpegts_random_access_is_exact_to_the_last_frame(transport_streams, name, backend, threads):
    path = transport_streams[name]
    with av.open(path) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == TS_FRAMES
    rng = np.random.default_rng(0)
    picks = [[TS_FRAMES - 1], [TS_FRAMES - 2, TS_FRAMES - 1], [12, 13, 130, 248]]
    picks += [sorted(rng.choice(TS_FRAMES, size=8, replace=False).tolist()) for _ in range(4)]
    with open_video(path, backend=backend, num_threads=threads, index_cache="") as video:
        assert video.metadata.num_frames == TS_FRAMES  # the index once lost the last GOP to a seek past it
        assert video.metadata.backend == "pyav"  # decord returns frames a GOP or more away
        for want in picks:
            assert [read_index(f.numpy()) for f in video.get_frames(want)] == want


# MPEG program streams (.mpg, .vob) as PyAV's muxer writes them, each with its own flaw, all decoded whole by FFmpeg
# in the right order: MPEG-1 whose demuxer, after a seek mid-file, gives the keyframe's data the times of later
# frames (its packet comes back unflagged); MPEG-2 where two frames share a presentation time; H.264 with most packets
# untimed. The first is seekable once the landing is checked on the keyframe flag; the other two cannot be addressed
# by time and are read in decode order.
PS_ENCODINGS = {
    "mpeg1": ("mpeg1video", {"g": "12", "bf": "2", "qscale": "2"}, "flagless landing"),
    "mpeg2": ("mpeg2video", {"g": "15", "bf": "2", "qscale": "2"}, "shared times"),
    "h264": ("libx264", {"g": "12", "bf": "2"}, "untimed"),
}


@pytest.fixture(scope="module")
def program_streams(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("mpegps")
    return {
        name: write_video(str(d / f"{name}.mpg"), codec, TS_FRAMES, options=options)
        for name, (codec, options, _) in PS_ENCODINGS.items()
    }


def _packet_times(path: str) -> list[int | None]:
    with av.open(path) as container:
        return [p.pts for p in container.demux(video=0) if p.size]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", list(PS_ENCODINGS))
def test_mpeg_program_streams_are_exact_whatever_their_timestamps(program_streams, name, threads, tmp_path):
    path = program_streams[name]
    times = _packet_times(path)
    timed = [t for t in times if t is not None]
    flaw = {"untimed": None in times, "shared times": len(set(timed)) < len(timed)}
    expected = PS_ENCODINGS[name][2]
    if expected != "flagless landing" and not flaw[expected]:
        pytest.skip(f"this FFmpeg writes {name} in MPEG-PS without the flaw under test ({expected})")
    with av.open(path) as container:
        assert [read_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)] == list(range(TS_FRAMES))
    rng = np.random.default_rng(1)
    picks = [[TS_FRAMES - 1], [0], [204, 205, 209], list(range(TS_FRAMES))]
    picks += [sorted(rng.choice(TS_FRAMES, size=8, replace=False).tolist()) for _ in range(4)]
    for cache in ("", str(tmp_path / "cache"), str(tmp_path / "cache")):  # no cache; written; read back
        with open_video(path, backend="decord", num_threads=threads, index_cache=cache) as video:
            m = video.metadata
            assert m.num_frames == TS_FRAMES and m.backend == "pyav"
            assert video._index.seekable == (expected == "flagless landing")
            assert m.fps == pytest.approx(25.0) and np.all(np.diff(m.timestamps) > 0)
            for want in picks:
                assert [read_index(f.numpy()) for f in video.get_frames(want)] == want


@pytest.fixture
def landings(monkeypatch) -> list[str]:
    """How each seek of the test lands (``_pyav._skip_to_keyframe``'s verdicts, in order)."""
    seen: list[str] = []
    skip = _pyav._skip_to_keyframe

    def spy(packets, seek_pts):
        result = skip(packets, seek_pts)
        seen.append(result[0])
        return result

    monkeypatch.setattr(_pyav, "_skip_to_keyframe", spy)
    return seen


def test_a_landing_on_an_unflagged_keyframe_is_retried(program_streams, landings):
    """MPEG-1 in a program stream: a seek to the keyframe of frame 204 meets a packet with the keyframe's time but no
    keyframe flag (its data is not the keyframe); the landing counts as missed and the seek is repeated earlier."""
    with open_video(program_streams["mpeg1"], index_cache="") as video:
        assert [read_index(f.numpy()) for f in video.get_frames([204])] == [204]
    assert landings[-2:] == ["past", "found"]


@pytest.mark.parametrize("container", ["avi", "flv"])
def test_h264_with_b_frames_in_avi_and_flv_is_exact_with_either_backend(container, tmp_path):
    """AVI stores decode times only: H.264 frames come out of the decoder as 1, 3, 4, 2, ... by those times, so the
    stream is read in decode order. FLV stores presentation times (PyAV is exact) but decord returns a wrong frame for
    one of the last few asked alone, so it is not served by decord."""
    path = write_video(str(tmp_path / f"clip.{container}"), "libx264", TS_FRAMES, options={"g": "12", "bf": "2"})
    with av.open(path) as c:
        assert [read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)] == list(range(TS_FRAMES))
    if container == "avi":  # the flaw under test: decode times out of order on the decoder's output
        with av.open(path) as c:
            times = [f.pts for f, _ in zip(c.decode(video=0), range(12), strict=False)]
        assert times != sorted(times)
    rng = np.random.default_rng(2)
    picks = [[TS_FRAMES - 1], [TS_FRAMES - 3], [0, 1, 2, 3], list(range(TS_FRAMES))]
    picks += [sorted(rng.choice(TS_FRAMES, size=8, replace=False).tolist()) for _ in range(4)]
    for backend in ("pyav", "decord"):
        with open_video(path, backend=backend, index_cache="") as video:
            assert video.metadata.num_frames == TS_FRAMES and video.metadata.backend == "pyav"
            assert video._index.seekable == (container == "flv")
            for want in picks:
                assert [read_index(f.numpy()) for f in video.get_frames(want)] == want


@pytest.fixture
def decode_starts(monkeypatch) -> list[int | None]:
    """Where each decode of the test starts (the ``seek_pts`` of every ``_pyav._decode_from`` call; None: the start)."""
    seen: list[int | None] = []
    decode_from = _pyav._decode_from

    def spy(container, stream, seek_pts, skip=None):
        seen.append(seek_pts)
        return decode_from(container, stream, seek_pts, skip)

    monkeypatch.setattr(_pyav, "_decode_from", spy)
    return seen


def test_window_by_window_reading_goes_on_decoding_instead_of_seeking_back(tmp_path, decode_starts):
    """Consecutive windows of a seekable file: a window whose keyframe the live decode has passed continues it, so
    each GOP is sought once, not once per window; frames right after the last one given (some of them passed as
    unreferenced B-frames) and requests behind it are still exact."""
    path = write_video(str(tmp_path / "clip.mp4"), "libx264", TS_FRAMES, options={"g": "50", "bf": "3"})
    with open_video(path, index_cache="") as video:
        assert video._index.seekable and 1 < len(video._index.keyframes) < 10  # x264 may add a keyframe at a cut
        decode_starts.clear()
        windows = [list(range(a, a + 10, 3)) for a in range(0, TS_FRAMES, 10)]
        for want in windows:
            assert [read_index(f.numpy()) for f in video.get_frames(want)] == want
        # one decode per GOP, and one more where the first window that follows on finds a frame already passed
        assert len(decode_starts) <= len(video._index.keyframes) + 1 < len(windows)
        for want in ([60], [61], [62, 63], [64], [40], [41, 99], [100], [249], [0]):
            assert [read_index(f.numpy()) for f in video.get_frames(want)] == want


def test_a_stream_in_decode_order_is_read_window_by_window_in_one_decode(tmp_path, decode_starts, monkeypatch):
    """A file that can only be read in decode order (AVI with reordered H.264) keeps its decode between requests:
    consecutive windows cost one decode from the start, not one each; a request behind the decode starts again; a
    failed request does not leave a broken decode behind."""
    path = write_video(str(tmp_path / "clip.avi"), "libx264", TS_FRAMES, options={"g": "12", "bf": "2"})
    with open_video(path, index_cache="") as video:
        assert not video._index.seekable
        assert decode_starts == [None]  # at open, one decode both finds the reordering and counts the frames
        decode_starts.clear()
        windows = [list(range(a, min(a + 40, TS_FRAMES), 5)) for a in range(0, TS_FRAMES, 40)]
        for want in windows:
            assert [read_index(f.numpy()) for f in video.get_frames(want)] == want
        assert decode_starts == [None]  # one decode for all the windows
        assert [read_index(f.numpy()) for f in video.get_frames([3, 100])] == [3, 100]  # behind: from the start
        assert [read_index(f.numpy()) for f in video.get_frames([101])] == [101]
        assert decode_starts == [None, None]

        def broken(*args, **kwargs):
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield  # a generator, as the real one

        spy = _pyav._decode_from
        monkeypatch.setattr(_pyav, "_decode_from", broken)
        with pytest.raises(VideoDecodeError, match="clip.avi: decoding failed near frame 50"):
            video.get_frames([50])  # behind the decode: a new one, which fails
        monkeypatch.setattr(_pyav, "_decode_from", spy)
        assert [read_index(f.numpy()) for f in video.get_frames([150, TS_FRAMES - 1])] == [150, TS_FRAMES - 1]
        assert decode_starts == [None, None, None]  # the failed decode is not resumed: a new one


@pytest.mark.parametrize(
    "name,ext,options,container_options,served",
    [
        ("closed GOPs", "mp4", {"g": "12", "bf": "3"}, None, "decord"),
        ("open GOPs", "mp4", {"x264-params": "open-gop=1:keyint=24", "bf": "3"}, None, "pyav"),
        ("open GOPs", "mkv", {"x264-params": "open-gop=1:keyint=24", "bf": "3"}, None, "pyav"),
        ("no duration", "mkv", {"g": "12", "bf": "2"}, {"live": "1"}, "pyav"),
    ],
)
def test_decord_serves_h264_only_where_it_is_exact(name, ext, options, container_options, served, tmp_path):
    """decord decodes an open GOP's leading B-frames from their own keyframe (wrong pixels, 16 of a few hundred frames
    asked) and cannot open a Matroska header without duration; those files go to PyAV, whose frames are exact, and
    the flags that decide it survive the on-disk index cache."""
    path = write_video(
        str(tmp_path / f"clip.{ext}"), "libx264", TS_FRAMES, options=options, container_options=container_options
    )
    picks = [[TS_FRAMES - 1], [23, 24, 25, 47, 48], list(range(TS_FRAMES))]
    for cache in ("", str(tmp_path / "cache"), str(tmp_path / "cache")):  # no cache; written; read back
        with open_video(path, backend="decord", index_cache=cache) as video:
            assert video.metadata.backend == served
            assert video._index.open_gop == (name == "open GOPs")
            assert video._index.header_duration == (name != "no duration")
            for want in picks:
                assert [read_index(f.numpy()) for f in video.get_frames(want)] == want


def test_a_raw_elementary_stream_is_a_one_line_error(tmp_path):
    path = write_video(str(tmp_path / "clip.h264"), "libx264", 12, options={"g": "4", "bf": "2"})
    with pytest.raises(VideoDecodeError, match=r"clip\.h264: the video stream has no timestamps") as err:
        open_video(path, index_cache="")
    assert "\n" not in str(err.value)


def write_ts_segment(path: str, first: int, count: int, width: int, height: int) -> bytes:
    """MPEG-TS frames ``first .. first+count-1`` at ``width x height``, timestamps continuing from frame ``first``."""
    with av.open(path, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25, options={"g": "10", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(first, first + count):
            image = np.kron(pattern(i)[:, :, 0], np.ones((height // H, width // W), dtype=np.uint8))
            frame = av.VideoFrame.from_ndarray(np.repeat(image[:, :, None], 3, axis=2), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with open(path, "rb") as f:
        return f.read()


def test_joined_segments_keep_every_frame_and_one_frame_shape(tmp_path):
    """Adaptive-streaming segments joined into one file: the joint's packet is flagged corrupt by the demuxer (a
    continuity gap) yet decodes, and the second half has twice the resolution. Every frame is a frame, and frames
    come at one shape (the index's, as without a decode size)."""
    low = write_ts_segment(str(tmp_path / "low.ts"), 0, 20, W, H)
    high = write_ts_segment(str(tmp_path / "high.ts"), 20, 20, 2 * W, 2 * H)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(low + high)
    with av.open(str(joined)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 40
    with open_video(joined, index_cache="") as video:
        assert video.metadata.num_frames == 40  # the joint's frame was once dropped from the index
        m = video.metadata
        picks = [0, 18, 19, 20, 21, 39]
        frames = video.get_frames(picks)
        assert tuple(frames.shape) == (6, 3, m.height, m.width)
        assert [read_index(f.numpy()) for f in frames] == picks
        assert [read_index(f.numpy()) for f in video.get_frames(picks, size=32)] == picks


def test_seeks_land_on_the_keyframe_first_time_where_the_container_indexes_it(corpus, transport_streams, landings):
    """MP4, Matroska, WebM and AVI seek straight to the keyframe (one seek per run, no retry, never from the start);
    MPEG-TS overshoots and is retried, and still gives the right frames."""
    for name in ("h264", "vp9", "hevc", "mpeg4", "vfr"):
        landings.clear()
        with open_video(corpus[name], index_cache="") as video:
            n = video.metadata.num_frames
            picks = [n - 1, n // 2, 1]
            assert [read_index(f.numpy()) for f in video.get_frames(picks)] == picks
        assert landings and set(landings) == {"found"}, name
    landings.clear()
    with open_video(transport_streams["h264"], index_cache="") as video:
        picks = [TS_FRAMES - 1, 130, 13]
        assert [read_index(f.numpy()) for f in video.get_frames(picks)] == picks
    assert "past" in landings and "found" in landings
