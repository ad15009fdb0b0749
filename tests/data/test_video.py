"""Exactness of ``open_video``: every frame carries its own index in its pixels (see ``corpus.py``)."""

from __future__ import annotations

import pickle
import threading
import time

import av
import numpy as np
import pytest
import torch
from corpus import H, W, pattern, read_index

from vidvlm.data import _pyav
from vidvlm.data.video import VideoMetadata, open_video
from vidvlm.errors import VideoDecodeError

VIDEOS = {"h264": 75, "vp9": 40, "mpeg4": 50, "hevc": 45, "vfr": 40, "rot90": 30, "rot270": 20, "one": 1, "gif": 12}
IMAGES = ["img_jpg", "img_png", "img_webp", "img_bmp", "img_grey", "img_rgba"]
BACKENDS = ["pyav", "decord"]
VFR_PTS_MS = np.cumsum([0] + [30 + 37 * (i % 3) for i in range(39)])


def indices_of(frames: torch.Tensor) -> list[int]:
    return [read_index(f.numpy()) for f in frames]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(VIDEOS))
def test_every_frame_exact_in_any_order(corpus, name, backend):
    rng = np.random.default_rng(sum(map(ord, name)))
    with open_video(corpus[name], backend=backend) as video:
        n = video.metadata.num_frames
        assert n == VIDEOS[name]
        order = rng.permutation(n).tolist()
        frames = video.get_frames(order)
        assert frames.dtype == torch.uint8 and frames.shape == (n, 3, H, W)
        assert indices_of(frames) == order
        picks = rng.integers(0, n, size=12).tolist() + [n - 1, 0, n - 1]  # random, with duplicates, unsorted
        assert indices_of(video.get_frames(picks)) == picks
        assert indices_of(video.get_frames(torch.tensor([n - 1]))) == [n - 1]
        expected_backend = (
            "pyav" if name in ("gif", "mpeg4", "hevc") else backend
        )  # decord is wrong on these: PyAV serves
        assert video.metadata.backend == expected_backend


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size", [None, 24])
@pytest.mark.parametrize("name", ["h264", "hevc", "vp9", "mpeg4", "vfr"])
def test_pixels_match_plain_pyav_decode(corpus, name, size, threads):
    """Planned seeking (and skipping unreferenced frames), scaling while converting with a reused converter (one
    scaling thread per concurrent GOP, ``num_threads`` on a one-GOP request), and concurrent GOPs must give exactly
    the pixels of a straight decode converted frame by frame."""
    picks = [-1, 3, 40, 3, 0.5]
    with open_video(corpus[name], backend="pyav", num_threads=threads) as video:
        n = video.metadata.num_frames
        picks = [int(p * n) if isinstance(p, float) else p % n for p in picks]
        got = video.get_frames(picks, size=size)
        one_gop = video.get_frames([4, 2], size=size)  # one run: the request's own decoder and its thread count
    height, width = got.shape[-2:]
    with av.open(corpus[name]) as container:
        ref = [f.to_ndarray(width=width, height=height, format="rgb24") for f in container.decode(video=0)]
    for frame, i in zip([*got, *one_gop], [*picks, 4, 2], strict=True):
        assert torch.equal(frame, torch.from_numpy(ref[i]).permute(2, 0, 1))


@pytest.mark.parametrize("name", ["h264", "vfr", "rot90", "vp9", "one"])
def test_backends_agree(corpus, name):
    with open_video(corpus[name], backend="pyav") as a, open_video(corpus[name], backend="decord") as b:
        assert (a.metadata.backend, b.metadata.backend) == ("pyav", "decord")
        assert a.metadata == VideoMetadata(**{**b.metadata.__dict__, "backend": "pyav"})
        picks = np.random.default_rng(0).integers(0, a.metadata.num_frames, 10)
        for size in (None, 24, (20, 30)):
            fa, fb = a.get_frames(picks, size=size), b.get_frames(picks, size=size)
            assert fa.shape == fb.shape
            assert (fa.int() - fb.int()).abs().float().mean() < 2.0  # same frames; colour conversion may differ


def test_metadata(corpus):
    m = open_video(corpus["h264"]).metadata
    assert (m.width, m.height, m.rotation, m.fps, m.backend) == (W, H, 0, 25.0, "pyav")
    assert m.duration == pytest.approx(3.0)
    assert np.allclose(np.diff(m.timestamps), 0.04) and len(m.timestamps) == m.num_frames
    gif = open_video(corpus["gif"]).metadata
    assert gif.num_frames == 12 and gif.duration == pytest.approx(0.48)


@pytest.mark.parametrize("name,rotation", [("rot90", 90), ("rot270", 270)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rotation_is_applied(corpus, name, rotation, backend):
    with open_video(corpus[name], backend=backend) as video:
        m = video.metadata
        assert (m.rotation, m.width, m.height) == (rotation, W, H)  # stored 48x64, displayed 64x48
        frames = video.get_frames([0, 7, 2], size=(24, 32))
        assert frames.shape == (3, 3, 24, 32) and indices_of(frames) == [0, 7, 2]
        assert torch.equal(video.get_frames([5])[0], video.get_frames([5])[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_timestamps_and_get_frames_at(corpus, backend):
    with open_video(corpus["vfr"], backend=backend) as video:
        m = video.metadata
        assert np.allclose(m.timestamps, VFR_PTS_MS / 1000.0)
        rng = np.random.default_rng(1)
        times = np.concatenate([rng.uniform(0, m.duration, 20), VFR_PTS_MS[[0, 5, 39]] / 1000.0, [0.0299]])
        expected = [int(np.searchsorted(VFR_PTS_MS, t * 1000.0 + 1e-6, side="right") - 1) for t in times]
        assert indices_of(video.get_frames_at(times)) == expected
        assert expected[-1] == 0 and expected[-2] == 39  # exactly on a pts gives that frame; just before, the last


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_short_side_and_tuple(corpus, backend):
    with open_video(corpus["h264"], backend=backend) as video:
        small = video.get_frames([9, 60], size=24)
        assert small.shape == (2, 3, 24, 32) and indices_of(small) == [9, 60]
        hw = video.get_frames([9, 60], size=(30, 40))
        assert hw.shape == (2, 3, 30, 40) and indices_of(hw) == [9, 60]
        assert video.get_frames([], size=24).shape == (0, 3, 24, 32)


@pytest.mark.parametrize("name", IMAGES)
def test_images_are_one_frame_videos(corpus, name):
    with open_video(corpus[name], backend="decord") as video:
        m = video.metadata
        assert (m.num_frames, m.fps, m.duration, m.timestamps, m.width, m.height) == (1, 0.0, 0.0, (0.0,), W, H)
        frames = video.get_frames([0, 0])
        assert frames.shape == (2, 3, H, W) and indices_of(frames) == [0, 0]
        tol = 40 if name in ("img_jpg", "img_webp") else 0
        assert (frames[0].permute(1, 2, 0).int() - torch.from_numpy(pattern(0)).int()).abs().max() <= tol
        assert video.get_frames([0], size=12).shape == (1, 3, 12, 16)


def test_pickle_drops_decoder_and_reopens(corpus):
    video = open_video(corpus["h264"])
    first = video.get_frames([10, 70])
    clone = pickle.loads(pickle.dumps(video))
    assert clone._decoder is None and clone.metadata == video.metadata
    assert torch.equal(clone.get_frames([10, 70]), first)
    video.close()
    assert torch.equal(video.get_frames([10, 70]), first)  # reopens after close


def test_plan_seeks_forward_once_per_gop(corpus, monkeypatch):
    """Keyframes every 30 frames: asking 2, 5, 40, 41, 70 must seek at most 3 times, never backwards."""
    seeks: list[int] = []
    original = _pyav._decode_from

    def spy(container, stream, seek_pts, keep=None):
        seeks.append(-1 if seek_pts is None else seek_pts)
        return original(container, stream, seek_pts, keep)

    video = open_video(corpus["h264"])
    monkeypatch.setattr(_pyav, "_decode_from", spy)
    assert indices_of(video.get_frames([70, 41, 5, 2, 40, 70])) == [70, 41, 5, 2, 40, 70]
    assert len(seeks) <= 3 and seeks == sorted(seeks)
    seeks.clear()
    assert indices_of(video.get_frames([1, 2, 3, 4])) == [1, 2, 3, 4]
    assert len(seeks) == 1  # one GOP: one seek, then straight decoding


def test_forked_worker_opens_its_own_decoder(corpus):
    """A Video used in the parent and inherited by fork (not pickled) must not share the parent's decoder."""
    import multiprocessing as mp

    video = open_video(corpus["h264"])
    assert indices_of(video.get_frames([60, 5])) == [60, 5]
    ctx = mp.get_context("fork")
    queue = ctx.SimpleQueue()
    child = ctx.Process(target=_decode_in_child, args=(video, [61, 4], queue))  # fork: inherited, not pickled
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0 and queue.get() == [61, 4]
    assert indices_of(video.get_frames([62])) == [62]  # the parent's decoder still works


def _decode_in_child(video, picks, queue):
    queue.put(indices_of(video.get_frames(picks)))


def test_decord_is_not_imported_until_used():
    import subprocess
    import sys

    code = "import sys, vidvlm.data.video as v; assert 'decord' not in sys.modules, 'decord imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["h264", "vp9", "hevc", "mpeg4", "vfr", "rot90"])
def test_concurrent_gops_give_the_serial_frames(corpus, name, monkeypatch):
    """num_threads > 1 decodes independent GOPs on several threads: the same pixels as one thread, in order."""
    threads: set[int] = set()
    original = _pyav.StreamDecoder.read

    def spy(self, run, out_wh):
        threads.add(threading.get_ident())
        time.sleep(0.02)  # tiny clips decode in microseconds: give the other threads time to take a run
        return original(self, run, out_wh)

    n = VIDEOS[name]
    picks = np.random.default_rng(7).permutation(n)[: max(8, n // 2)].tolist() + [n - 1, 0]
    with open_video(corpus[name], backend="pyav") as serial:
        want = serial.get_frames(picks, size=24)
    monkeypatch.setattr(_pyav.StreamDecoder, "read", spy)
    with open_video(corpus[name], backend="pyav", num_threads=3) as video:
        assert len(_pyav.plan_runs(video._index, np.unique(picks))) > 1
        got = video.get_frames(picks, size=24)
        assert torch.equal(got, want) and indices_of(got) == picks
        assert len(video._workers) == 3 and len(threads) > 1
        assert torch.equal(video.get_frames(picks, size=24), want)  # the workers are reused


def test_concurrent_runs_report_the_first_error_in_frame_order(corpus, monkeypatch):
    """Whichever thread fails first, the error raised is the one a serial decode would have met first."""
    original = _pyav.StreamDecoder.read

    def failing(self, run, out_wh):
        if run[0] >= 30:
            time.sleep(0.2 if run[0] < 60 else 0.0)  # the later run fails first
            raise VideoDecodeError(f"{self.path}: frame {int(run[0])} does not decode")
        return original(self, run, out_wh)

    monkeypatch.setattr(_pyav.StreamDecoder, "read", failing)
    for threads in (1, 3):
        with open_video(corpus["h264"], num_threads=threads) as video, pytest.raises(VideoDecodeError, match="35"):
            video.get_frames([1, 35, 70])
