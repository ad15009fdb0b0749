"""Random access against one plain decode, over the containers and codecs this FFmpeg build writes.

Each file holds pattern frames (``corpus.py``) with B-frames where the codec has them; the frames any request returns,
with either backend, must be the ones a sequential decode gives at those positions. Flaws found this way (a seek that
lands on an unflagged keyframe, shared or missing times, decode times only, decord's wrong frames in FLV and on open
GOPs, decord unable to open a header without duration) have their own tests in ``test_video_encodings.py``; this is
the net under all of them.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from corpus import read_index, write_video

from vidvlm.data.video import open_video

N = 250  # read_index counts to 255; the MPEG-PS flaws showed only past frame 200
BF = {"g": "12", "bf": "2"}
OPEN_GOP = {"x264-params": "open-gop=1:keyint=24", "bf": "3"}
LIVE = {"live": "1"}  # Matroska/WebM written as a live recording: no duration in the header
# (extension, encoder, options, pixel format[, container options])
CASES = [
    ("mp4", "libx264", BF, "yuv420p"),
    ("mp4", "libx264", {**BF, "bf": "3"}, "yuv420p", {"movflags": "frag_keyframe+empty_moov"}),
    ("mp4", "libx264", OPEN_GOP, "yuv420p"),
    ("mkv", "libx264", OPEN_GOP, "yuv420p"),
    ("ts", "libx264", OPEN_GOP, "yuv420p"),
    ("mp4", "libx265", {"x265-params": "keyint=24:bframes=3:open-gop=1:log-level=error"}, "yuv420p"),
    ("webm", "libvpx-vp9", {"g": "12"}, "yuv420p"),
    ("webm", "libvpx-vp9", {"g": "12"}, "yuv420p", LIVE),
    ("mkv", "libx264", BF, "yuv420p", LIVE),
    ("mkv", "libx264", BF, "yuv420p"),
    ("mkv", "libx265", {"x265-params": "keyint=12:bframes=2:log-level=error"}, "yuv420p"),
    ("mkv", "ffv1", {}, "yuv420p"),
    ("mkv", "mpeg2video", BF, "yuv420p"),
    ("webm", "libvpx", {"g": "12"}, "yuv420p"),
    ("avi", "libx264", BF, "yuv420p"),
    ("avi", "mpeg4", BF, "yuv420p"),
    ("avi", "mjpeg", {}, "yuvj420p"),
    ("flv", "libx264", BF, "yuv420p"),
    ("flv", "flv1", {"g": "12"}, "yuv420p"),
    ("nut", "mpeg4", BF, "yuv420p"),
    ("asf", "wmv2", {"g": "12"}, "yuv420p"),
    ("mov", "mjpeg", {}, "yuvj420p"),
    ("ts", "mpeg1video", BF, "yuv420p"),
    ("m2ts", "libx264", BF, "yuv420p"),
    ("mpg", "mpeg1video", BF, "yuv420p"),
    ("mpg", "mpeg2video", BF, "yuv420p"),
    ("vob", "mpeg2video", {"g": "15", "bf": "2"}, "yuv420p"),
    ("mxf", "mpeg2video", BF, "yuv420p"),
    ("y4m", "rawvideo", {}, "yuv420p"),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_random_access_equals_a_plain_decode(case, tmp_path):
    ext, codec, options, pix_fmt = case[:4]
    path = str(tmp_path / f"clip.{ext}")
    try:
        write_video(
            path, codec, N, options=options, pix_fmt=pix_fmt, container_options=case[4] if len(case) > 4 else None
        )
    except (av.error.FFmpegError, ValueError) as err:
        pytest.skip(f"this FFmpeg cannot write {codec} in .{ext} ({err})")
    with av.open(path) as container:
        plain = [read_index(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    assert plain == list(range(N))  # the writer's frames, in order: the reference is sound
    rng = np.random.default_rng(0)
    picks = [[N - 1], [N - 3], [0], [1, 2, 3], list(range(N))]
    picks += [sorted(rng.choice(N, size=6, replace=False).tolist()) for _ in range(4)]
    for backend in ("pyav", "decord"):
        for threads in (1, 2):
            with open_video(path, backend=backend, num_threads=threads, index_cache="") as video:
                assert video.metadata.num_frames == N, (backend, threads)
                for want in picks:
                    got = [read_index(f.numpy()) for f in video.get_frames(want)]
                    assert got == want, (video.metadata.backend, threads, want)
