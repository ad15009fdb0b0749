"""Reading one file window by window (what ``caption_video.py --segment`` and consecutive-clip extraction do): vidvlm
against torchcodec and one plain PyAV pass, side by side in one run.

Task: the file cut into consecutive windows of ``--window`` seconds; from each, ``--frames`` frames spread uniformly
over the window (``round(linspace(first, last, n))``), delivered as uint8 RGB at 224 short side, one window after
the other from one opened decoder (opening included). Two generated files of the same frames: H.264 with B-frames in
MP4 (seekable: vidvlm seeks to each window's keyframe) and in AVI (decode times only: vidvlm numbers the frames in
decode order and keeps one forward decode between requests). Beside them, one plain PyAV decode of the whole file
keeping the wanted frames. Every method's frames are compared with vidvlm's, frame by frame (torchcodec scales with
another filter: a mean difference of a level or two is the same frame; the generated frames differ from their
neighbours by tens of levels). Wall and CPU time (every thread of the process), median of ``--repeats``, methods
interleaved within each repeat.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_windows.py [--seconds 60] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import av
import numpy as np
import torch
from bench_decode import SHORT, out_hw  # the frame size every decoder delivers (this script's folder is on the path)
from einops import rearrange

from vidvlm.data.video import open_video
from vidvlm.environment import cpu_name

WRONG = 8.0  # mean |difference| in levels above which a frame is another frame (scaling filters differ by 1-2)
Windows = list[np.ndarray]


def write_clip(path: str, seconds: int, fps: int = 30, width: int = 640, height: int = 360) -> str:
    """A moving gradient beside a flat block whose colour changes every frame: a frame one position off differs by
    tens of levels on average, a scaling filter's difference by one or two."""
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"g": "250", "bf": "3", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        x = np.arange(width, dtype=np.int32)[None, :]
        y = np.arange(height, dtype=np.int32)[:, None]
        for i in range(seconds * fps):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = (x + 4 * i) % 256
            img[..., 1] = (y + 2 * i) % 256
            img[..., 2] = ((x // 40) * 40 + i) % 256
            img[:, : width // 2] = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def windows_of(path: str, seconds: float, frames: int) -> Windows:
    with open_video(path, index_cache="") as video:
        n, fps = video.metadata.num_frames, video.metadata.fps
    per = max(1, round(seconds * fps))
    return [np.round(np.linspace(a, min(a + per, n) - 1, frames)).astype(np.int64) for a in range(0, n, per)]


def run_vidvlm(path: str, windows: Windows) -> list[torch.Tensor]:
    with open_video(path, num_threads=1, index_cache="") as video:
        return [video.get_frames(w, size=SHORT) for w in windows]


def run_pyav_one_pass(path: str, windows: Windows) -> list[torch.Tensor]:
    """One decode of the whole file, keeping the wanted frames (scaled by sws_scale, as vidvlm does)."""
    wanted = {int(i) for w in windows for i in w}
    kept: dict[int, np.ndarray] = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
        h, w = out_hw(stream.codec_context.height, stream.codec_context.width)
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(width=w, height=h, format="rgb24")
    return [torch.from_numpy(rearrange(np.stack([kept[int(i)] for i in win]), "t h w c -> t c h w")) for win in windows]


def run_torchcodec(seek_mode: str) -> Callable[[str, Windows], list[torch.Tensor]]:
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    def run(path: str, windows: Windows) -> list[torch.Tensor]:
        probe = VideoDecoder(path, seek_mode=seek_mode, num_ffmpeg_threads=1)
        h, w = out_hw(probe.metadata.height, probe.metadata.width)
        decoder = VideoDecoder(path, seek_mode=seek_mode, num_ffmpeg_threads=1, transforms=[Resize((h, w))])
        return [decoder.get_frames_at(win.tolist()).data for win in windows]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="length of the generated clips")
    parser.add_argument("--window", type=float, default=1.0, help="window length in seconds")
    parser.add_argument("--frames", type=int, default=8, help="frames per window")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    methods: dict[str, Callable[[str, Windows], list[torch.Tensor]]] = {
        "vidvlm": run_vidvlm,
        "PyAV, one pass over the file": run_pyav_one_pass,
    }
    for mode in ("exact", "approximate"):
        try:
            methods[f"torchcodec {mode}"] = run_torchcodec(mode)
        except (ImportError, RuntimeError, OSError) as err:
            print(f"note: torchcodec {mode} skipped ({type(err).__name__}: {err})")

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        print("| file | windows | method | wall ms (median) | CPU ms (median) | wall / one pass | frames as vidvlm's |")
        print("|---|---|---|---|---|---|---|")
        for ext in ("mp4", "avi"):
            path = write_clip(os.path.join(tmp, f"clip.{ext}"), args.seconds)
            windows = windows_of(path, args.window, args.frames)
            reference = run_vidvlm(path, windows)
            same: dict[str, str] = {}
            for name, fn in methods.items():
                try:
                    got = torch.cat(fn(path, windows)).float()
                    diff = (got - torch.cat(reference).float()).abs().mean(dim=(1, 2, 3))
                    wrong = int((diff > WRONG).sum())
                    same[name] = f"{len(diff) - wrong} of {len(diff)}" + (f" ({wrong} wrong)" if wrong else "")
                except Exception as err:  # a peer that cannot read this file is reported, not fatal
                    same[name] = f"fails: {type(err).__name__}"
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods if "fails" not in same[name]}
            for _ in range(args.repeats):
                for name in times:
                    w0, c0 = time.perf_counter(), time.process_time()
                    methods[name](path, windows)
                    times[name].append((time.perf_counter() - w0, time.process_time() - c0))
            one_pass = statistics.median(t[0] for t in times["PyAV, one pass over the file"])
            for name in methods:
                if name not in times:
                    print(f"| {ext} | {len(windows)} | {name} | — | — | — | {same[name]} |")
                    continue
                wall = statistics.median(t[0] for t in times[name])
                cpu = statistics.median(t[1] for t in times[name])
                row = f"| {ext} | {len(windows)} | {name} | {wall * 1e3:.0f} | {cpu * 1e3:.0f} | {wall / one_pass:.2f}"
                print(f"{row} | {same[name]} |")


if __name__ == "__main__":
    main()
