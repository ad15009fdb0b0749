"""Bad input fails fast with a VideoDecodeError naming the file and the reason; header over-reporting is survived."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from corpus import read_index, write_audio_only, write_video

from vidvlm.data.video import open_video
from vidvlm.errors import VideoDecodeError, VidVLMError


@pytest.fixture(scope="module")
def mp4_bytes(tmp_path_factory) -> tuple[bytes, bytes]:
    """(moov at the end, moov at the front) versions of one 60-frame H.264 clip with B-frames."""
    d = tmp_path_factory.mktemp("bad")
    opts = {"g": "15", "bf": "2"}
    plain = write_video(str(d / "plain.mp4"), "libx264", 60, options=opts)
    fast = write_video(str(d / "fast.mp4"), "libx264", 60, options=opts, container_options={"movflags": "faststart"})
    with open(plain, "rb") as a, open(fast, "rb") as b:
        return a.read(), b.read()


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def assert_fails(path: str, reason: str, backend: str = "auto") -> None:
    start = time.monotonic()
    with pytest.raises(VideoDecodeError) as info:
        open_video(path, backend=backend)
    assert time.monotonic() - start < 10.0
    message = str(info.value)
    assert str(path) in message and reason in message, message
    assert isinstance(info.value, VidVLMError) and isinstance(info.value, ValueError)


def test_missing_file(tmp_path):
    assert_fails(str(tmp_path / "nope.mp4"), "does not exist")


def test_empty_file(tmp_path):
    assert_fails(write(tmp_path / "empty.mp4", b""), "empty")


def test_random_bytes_named_mp4(tmp_path):
    assert_fails(write(tmp_path / "noise.mp4", np.random.default_rng(0).bytes(4096)), "not a readable video")


def test_random_bytes_named_jpg(tmp_path):
    assert_fails(write(tmp_path / "noise.jpg", np.random.default_rng(1).bytes(4096)), "not a readable image")


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_metadata_that_is_not_utf8_is_survived(tmp_path, backend):
    """A tag with bytes that are not UTF-8 (PyAV reads tags strictly by default) leaves the frames readable."""
    pytest.importorskip({"pyav": "av"}.get(backend, backend))
    path = write_video(str(tmp_path / "tagged.mp4"), "libx264", 12, metadata={"title": "VIDVLMTAG"})
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(b"VIDVLMTAG") == 1
    write(path, data.replace(b"VIDVLMTAG", b"\xff\xfeVIDVL\xc3\x28"))  # same length: the atom sizes still hold
    with open_video(path, backend=backend) as video:
        frames = video.get_frames(list(range(12)))
    assert [read_index(f.numpy()) for f in frames] == list(range(12))


def test_audio_only(tmp_path):
    assert_fails(write_audio_only(str(tmp_path / "tone.m4a")), "no video stream")


def test_truncated_mp4_without_moov(tmp_path, mp4_bytes):
    plain, _ = mp4_bytes
    assert_fails(write(tmp_path / "cut.mp4", plain[: len(plain) // 2]), "not a readable video")


def test_zero_decodable_frames(tmp_path, mp4_bytes):
    """Valid container, every sample's bytes zeroed: demuxing works, decoding yields nothing."""
    data = bytearray(mp4_bytes[0])
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = bytes(end - start)
    assert_fails(write(tmp_path / "zeros.mp4", bytes(data)), "no frame")


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_header_over_reports_frames(tmp_path, mp4_bytes, backend):
    """moov (at the front) lists 60 frames but the sample data is cut: only the frames that decode are reported, and
    every one of them decodes, whichever backend is asked for (decord would trust the header and can hang, decord#373,
    so PyAV serves such files)."""
    _, fast = mp4_bytes
    path = write(tmp_path / f"overreport_{backend}.mp4", fast[: int(len(fast) * 0.85)])
    start = time.monotonic()
    with open_video(path, backend=backend) as video:
        n = video.metadata.num_frames
        assert 0 < n < 60 and len(video.metadata.timestamps) == n
        assert video.metadata.backend == "pyav"
        frames = video.get_frames(list(range(n))[::-1])
        assert [read_index(f.numpy()) for f in frames] == list(range(n))[::-1]
        with pytest.raises(VideoDecodeError, match=f"frame index {n} is out of range; the video has {n} frames"):
            video.get_frames([0, n])
    assert time.monotonic() - start < 10.0


def test_bad_indices_name_index_and_count(corpus):
    with open_video(corpus["h264"]) as video:
        with pytest.raises(VideoDecodeError, match=r"h264\.mp4: frame index 75 is out of range; the video has 75"):
            video.get_frames([3, 75])
        with pytest.raises(VideoDecodeError, match="frame index -1 is out of range"):
            video.get_frames([-1])
        with pytest.raises(VideoDecodeError, match="integers"):
            video.get_frames([0.5])
        with pytest.raises(VideoDecodeError, match="outside the video"):
            video.get_frames_at([3.5])
        with pytest.raises(VideoDecodeError, match="size must be"):
            video.get_frames([0], size=(0, 4))
    with pytest.raises(VideoDecodeError, match="unknown backend 'ffmpeg'"):
        open_video(corpus["h264"], backend="ffmpeg")


def test_symlink_loop_is_named(tmp_path):
    os.symlink(tmp_path / "b.mp4", tmp_path / "a.mp4")
    os.symlink(tmp_path / "a.mp4", tmp_path / "b.mp4")
    assert_fails(str(tmp_path / "a.mp4"), "symbolic link loop")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    assert_fails(str(tmp_path / "loop" / "clip.mp4"), "symbolic link loop")  # the loop is a folder on the way


def test_broken_symlink_names_its_target(tmp_path):
    os.symlink(tmp_path / "gone.mp4", tmp_path / "link.mp4")
    assert_fails(str(tmp_path / "link.mp4"), f"broken symbolic link (its target '{tmp_path / 'gone.mp4'}' is missing)")


def test_directory_is_not_a_video(tmp_path):
    os.makedirs(tmp_path / "clip.mp4")
    assert_fails(str(tmp_path / "clip.mp4"), "not a regular file")


@pytest.mark.parametrize("options", [{"g": "10", "bf": "3"}, {"g": "15", "bf": "2"}])
def test_every_frame_of_a_truncated_file_decodes(tmp_path, options):
    """Cut anywhere, every frame the index lists decodes, alone or with others: the frames a decoder still holds
    when it meets the cut packet are real (a cut at 85 % listed frame 32, which then failed to decode)."""
    full = write_video(
        str(tmp_path / "full.mp4"), "libx264", 60, options=options, container_options={"movflags": "faststart"}
    )
    with open(full, "rb") as f:
        data = f.read()
    for fraction in (0.7, 0.8, 0.83, 0.85, 0.89, 0.95):
        path = write(tmp_path / f"cut{fraction}.mp4", data[: int(len(data) * fraction)])
        with open_video(path) as video:
            n = video.metadata.num_frames
            batch = [read_index(f.numpy()) for f in video.get_frames(list(range(n))[::-1])][::-1]
            alone = [read_index(video.get_frames([i])[0].numpy()) for i in range(n)]
            assert batch == alone and all(b > a for a, b in zip(batch, batch[1:], strict=False)), (fraction, batch)
