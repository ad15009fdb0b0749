"""Files with several video streams: the chosen stream is the one decoded, by either backend, and the one described."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from corpus import H, W, pattern, read_index

from vidvlm.data.video import open_video
from vidvlm.errors import VideoDecodeError

# (width, height, rate, frames, first index shown): the second stream is larger, at another rate, and its frames
# show 100 + i, so a frame tells which stream it came from.
SMALL = (W, H, Fraction(25), 30, 0)
LARGE = (W * 3 // 2, H * 3 // 2, Fraction(30000, 1001), 40, 100)


def write_two_streams(path: str, default: int) -> str:
    """An MP4 with a 64x48 25 fps stream (index 0) then a 96x72 29.97 fps stream (index 1), plus an audio stream
    (index 2); ``default`` is the stream flagged as the default video stream."""
    with av.open(path, "w") as out:
        streams = []
        for i, (w, h, rate, _, _) in enumerate((SMALL, LARGE)):
            s = out.add_stream("libx264", rate=rate, options={"g": "10", "bf": "2"})
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.disposition = av.stream.Disposition.default if i == default else av.stream.Disposition(0)
            streams.append(s)
        audio = out.add_stream("aac", rate=16000)
        for s, (w, h, _, n, first) in zip(streams, (SMALL, LARGE), strict=True):
            for i in range(n):
                img = np.kron(pattern(first + i)[::16, ::16], np.ones((h // 3, w // 4, 1), np.uint8))
                out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(s.encode(None))
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def two_streams(tmp_path_factory) -> dict[int, str]:
    d = tmp_path_factory.mktemp("streams")
    return {default: write_two_streams(str(d / f"default{default}.mp4"), default) for default in (0, 1)}


def check_stream(video, spec, stream: int) -> None:
    """The metadata describes ``spec`` and every frame returned comes from it."""
    w, h, rate, n, first = spec
    m = video.metadata
    assert (m.stream, m.num_frames, m.width, m.height) == (stream, n, w, h)
    assert m.fps == pytest.approx(float(rate), rel=1e-3)
    picks = [n - 1, 0, n // 2, 3]
    frames = video.get_frames(picks)
    assert frames.shape == (4, 3, h, w)
    assert [read_index(f.numpy()) for f in frames] == [first + i for i in picks]
    assert video.get_frames(picks, size=24).shape == (4, 3, 24, 32)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("default", [0, 1])
def test_default_is_ffmpegs_best_stream(two_streams, default, backend):
    """stream=None decodes the stream FFmpeg calls best (the default one), with PyAV even when decord is asked for:
    decord cannot be pointed at a stream and its own choice differs from FFmpeg's on these files."""
    with open_video(two_streams[default], backend=backend) as video:
        check_stream(video, (SMALL, LARGE)[default], default)
        assert video.metadata.backend == "pyav"


@pytest.mark.parametrize("backend", ["pyav", "decord"])
@pytest.mark.parametrize("stream", [0, 1])
def test_an_int_picks_that_stream(two_streams, stream, backend):
    with open_video(two_streams[0], backend=backend, stream=stream) as video:
        check_stream(video, (SMALL, LARGE)[stream], stream)


def test_stream_choice_survives_pickling_and_reopening(two_streams):
    import pickle

    video = open_video(two_streams[0], stream=1)
    clone = pickle.loads(pickle.dumps(video))
    check_stream(clone, LARGE, 1)
    video.close()
    check_stream(video, LARGE, 1)


def test_streams_are_indexed_apart(two_streams):
    """An index kept for one stream of a file is never served for another stream of it."""
    a, b = open_video(two_streams[0], stream=0), open_video(two_streams[0], stream=1)
    c = open_video(two_streams[0], stream=0)
    assert (a.metadata.num_frames, b.metadata.num_frames, c.metadata.num_frames) == (30, 40, 30)
    assert torch.equal(a.get_frames([7]), c.get_frames([7]))


@pytest.mark.parametrize(
    "stream,reason",
    [(2, "stream 2 is not a video stream (video streams: 0, 1)"), (5, "stream 5 is not a video stream"), ("1", "int")],
)
def test_a_stream_that_is_not_video_is_refused(two_streams, stream, reason):
    with pytest.raises(VideoDecodeError) as info:
        open_video(two_streams[0], stream=stream)
    assert two_streams[0] in str(info.value) and reason in str(info.value)


def test_single_stream_files_keep_decord(corpus):
    with open_video(corpus["h264"], backend="decord", stream=0) as video:
        assert (video.metadata.backend, video.metadata.stream) == ("decord", 0)
    with pytest.raises(VideoDecodeError, match="an image has a single stream"):
        open_video(corpus["img_png"], stream=1)
