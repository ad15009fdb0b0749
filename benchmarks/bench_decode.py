"""Time vidvlm's frame decoding against the decoders a user would pick instead, side by side in one run.

Task: N frames sampled uniformly (``round(linspace(0, num_frames - 1, N))``) from a file, delivered as uint8 RGB at
224 short side. Decoders that cannot resize while decoding resize afterwards (bilinear, antialiased), and that resize
is timed. Each timed call includes opening the file. Every peer's frames are checked against vidvlm's. Both wall
time and CPU time (``time.process_time``: every thread of this process) are recorded; on a shared machine the CPU
time is the steadier measure of the work each decoder does, the wall time the one a single user sees.

vidvlm is timed three ways: a first open (its in-process index cache emptied before each call), a reopen of a file
opened before in this process, and a reopen served by the on-disk index cache (what a new DataLoader worker or the
next run sees). Optional peers (decord, transformers, torchcodec: ``pip install vidvlm[bench]``, which also needs
FFmpeg's shared libraries) are skipped with a note when they do not import.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_decode.py [--repeats 5] [--cache /tmp/vidvlm_bench]
          [--methods "vidvlm first open" torchcodec ...]  (substrings of method names; default all)
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
import torch  # before decord (decord#251)
import torch.nn.functional as F

from vidvlm.data import _index_cache
from vidvlm.data.video import open_video
from vidvlm.environment import cpu_name

SHORT = 224
# Peers that resize after decoding use a different filter than sws_scale: same frames differ by about 1 level on
# average; a wrong frame (this clip moves every frame) differs by tens of levels.
SAME_FRAMES_TOL = 3.0


def make_clip(path: str, width: int, height: int, seconds: int, fps: int = 25, gop: int = 250) -> str:
    """Synthetic moving-gradient clip, H.264 with a long GOP and 3 B-frames (ultrafast, so it writes quickly)."""
    if os.path.exists(path):
        return path
    yy, xx = np.mgrid[0:height, 0:width]
    base = ((xx * 255) // width).astype(np.uint8)
    tmp = path + ".part.mp4"
    with av.open(tmp, "w") as out:
        stream = out.add_stream(
            "libx264",
            rate=fps,
            options={
                "preset": "ultrafast",
                "g": str(gop),
                "bf": "3",
                "sc_threshold": "0",
                "crf": "23",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=3",
            },
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(seconds * fps):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = np.roll(base, 3 * i, axis=1)
            img[..., 1] = ((yy + 2 * i) % 256).astype(np.uint8)
            img[..., 2] = (i * 37) % 256  # neighbouring frames differ by ~12 levels on average
            img[(i * 5) % (height - 40) : (i * 5) % (height - 40) + 40, : width // 4] = 255  # a moving bar
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode(None))
    os.replace(tmp, path)
    return path


def out_hw(h: int, w: int) -> tuple[int, int]:
    return (SHORT, round(w * SHORT / h)) if h <= w else (round(h * SHORT / w), SHORT)


def resize_after(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> uint8 [T, 3, h, w] at 224 short side (what a peer without decode-time scaling does)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=out_hw(*frames.shape[1:3]), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def run_vidvlm(backend: str, reuse: str = "none", num_threads: int = 1) -> Callable[[str, np.ndarray], torch.Tensor]:
    """``reuse``: "none" (first open: in-process index cache emptied), "memory" (reopen), "disk" (reopen in a fresh
    process: memory emptied, index read from a disk cache filled by an untimed first call)."""
    disk = tempfile.mkdtemp(prefix="vidvlm_index_") if reuse == "disk" else ""

    def fn(path: str, idx: np.ndarray) -> torch.Tensor:
        if reuse != "memory":
            _index_cache.clear_memory()
        with open_video(path, backend=backend, num_threads=num_threads, index_cache=disk) as video:
            return video.get_frames(idx, size=SHORT)

    return fn


def run_decord(path: str, idx: np.ndarray) -> torch.Tensor:
    import decord

    with av.open(path) as probe:  # decord needs the output size up front; read the stream size from the header
        th, tw = out_hw(probe.streams.video[0].height, probe.streams.video[0].width)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1, width=tw, height=th)
    return torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy()).permute(0, 3, 1, 2)


def run_hf(backend: str) -> Callable[[str, np.ndarray], torch.Tensor]:
    from transformers.video_utils import load_video

    def fn(path: str, idx: np.ndarray) -> torch.Tensor:
        frames, _ = load_video(path, backend=backend, sample_indices_fn=lambda metadata, **kw: idx)
        return resize_after(np.asarray(frames))

    return fn


def run_torchcodec(seek_mode: str, threads: int = 1) -> Callable[[str, np.ndarray], torch.Tensor]:
    """torchcodec as its docs show: ``VideoDecoder(..., seek_mode)`` and ``get_frames_at(indices)``, scaled while
    decoding by its ``Resize`` decoder transform, ``threads`` FFmpeg threads (one is its default)."""
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    def fn(path: str, idx: np.ndarray) -> torch.Tensor:
        with av.open(path) as probe:  # the output size needs the stream size; read it from the header
            th, tw = out_hw(probe.streams.video[0].height, probe.streams.video[0].width)
        decoder = VideoDecoder(path, seek_mode=seek_mode, num_ffmpeg_threads=threads, transforms=[Resize((th, tw))])
        return decoder.get_frames_at(idx.tolist()).data

    return fn


def threads(method: str) -> int:
    """Decoding threads a method is given (by its name; one unless it says two)."""
    return 2 if ("num_threads=2" in method or "2 threads" in method) else 1


def run_pyav_all(path: str, idx: np.ndarray) -> torch.Tensor:
    """The plain loop: decode from the start, keep the wanted frames (scaled by sws_scale), stop after the last."""
    wanted, last, out = set(idx.tolist()), int(idx.max()), {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        th, tw = out_hw(stream.codec_context.height, stream.codec_context.width)
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                out[i] = frame.to_ndarray(width=tw, height=th, format="rgb24")
            if i >= last:
                break
    return torch.from_numpy(np.stack([out[i] for i in idx.tolist()])).permute(0, 3, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache", default="/tmp/vidvlm_bench")
    parser.add_argument("--out", default="")
    parser.add_argument("--methods", nargs="*", default=[], help="keep only methods whose name contains one of these")
    args = parser.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    clips = {
        "720p, 20 s, GOP 250, B-frames": make_clip(os.path.join(args.cache, "720p_20s_v2.mp4"), 1280, 720, 20),
        "240p, 10 min, GOP 250, B-frames": make_clip(os.path.join(args.cache, "240p_10min_v2.mp4"), 426, 240, 600),
    }
    factories: dict[str, Callable[[], Callable[[str, np.ndarray], torch.Tensor]]] = {
        "vidvlm first open": lambda: run_vidvlm("auto"),
        "vidvlm reopened (in-process)": lambda: run_vidvlm("auto", "memory"),
        "vidvlm reopened (disk index cache)": lambda: run_vidvlm("auto", "disk"),
        "vidvlm first open, num_threads=2": lambda: run_vidvlm("auto", num_threads=2),
        "vidvlm reopened (in-process), num_threads=2": lambda: run_vidvlm("auto", "memory", num_threads=2),
        "vidvlm first open (decord)": lambda: run_vidvlm("decord"),
        "torchcodec exact": lambda: run_torchcodec("exact"),
        "torchcodec approximate": lambda: run_torchcodec("approximate"),
        "torchcodec approximate, 2 threads": lambda: run_torchcodec("approximate", threads=2),
        "decord get_batch": lambda: run_decord,
        "transformers load_video (decord)": lambda: run_hf("decord"),
        "transformers load_video (pyav)": lambda: run_hf("pyav"),
        "PyAV decode-all loop": lambda: run_pyav_all,
    }
    methods: dict[str, Callable[[str, np.ndarray], torch.Tensor]] = {}
    for name, factory in factories.items():
        if args.methods and not any(m in name for m in args.methods):
            continue
        try:
            methods[name] = factory()
        except (ImportError, RuntimeError, OSError) as err:  # torchcodec without FFmpeg's libraries: RuntimeError
            print(f"skipping {name}: {err}")
    if "vidvlm first open" not in methods:
        parser.error("--methods must keep 'vidvlm first open' (the reference for frames and ratios)")
    rows = []
    for clip_name, path in clips.items():
        n_total = open_video(path).metadata.num_frames
        for n in (8, 16):
            idx = np.round(np.linspace(0, n_total - 1, n)).astype(np.int64)
            times: dict[str, list[float]] = {m: [] for m in methods}
            cpu_times: dict[str, list[float]] = {m: [] for m in methods}
            outputs: dict[str, torch.Tensor] = {m: methods[m](path, idx) for m in methods if "reopened" in m}
            names = list(methods)  # the reopen methods' index caches were filled by the untimed call above
            for r in range(args.repeats):
                for m in names[r % len(names) :] + names[: r % len(names)]:  # interleaved, rotating start
                    t0, c0 = time.perf_counter(), time.process_time()
                    outputs[m] = methods[m](path, idx)
                    times[m].append(time.perf_counter() - t0)
                    cpu_times[m].append(time.process_time() - c0)
            ref = outputs["vidvlm first open"].int()
            med = {m: statistics.median(v) for m, v in times.items()}
            cpu = {m: statistics.median(v) for m, v in cpu_times.items()}
            for m in methods:
                # the peers given no more decoding threads than m (a two-thread vidvlm meets two-thread peers too)
                peers = [p for p in methods if not p.startswith("vidvlm") and threads(p) <= threads(m)]
                fastest = min(peers or ["vidvlm first open"], key=med.get)
                cheapest = min(peers or ["vidvlm first open"], key=cpu.get)
                o = outputs[m].int()
                diff = (o - ref).abs().float().mean().item() if o.shape == ref.shape else float("nan")
                ratios = (med[m] / med[fastest], cpu[m] / cpu[cheapest])
                rows.append((clip_name, n, m, med[m], ratios[0], cpu[m], ratios[1], diff))
                print(
                    f"{clip_name:34s} n={n:2d} {m:34s} {med[m] * 1000:9.1f} ms x{ratios[0]:.2f} ({fastest}) "
                    f"cpu {cpu[m] * 1000:9.1f} ms x{ratios[1]:.2f} ({cheapest})  mean|diff|={diff:.2f}",
                    flush=True,
                )
    header = (
        "| clip | frames | decoder | median wall ms | ratio to fastest peer | median CPU ms | ratio to cheapest peer "
        "| mean abs diff vs vidvlm | same frames |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {c} | {n} | {m} | {t * 1000:.1f} | {r:.2f} | {ct * 1000:.1f} | {cr:.2f} | {d:.2f} "
        f"| {'yes' if d < SAME_FRAMES_TOL else 'NO'} |\n"
        for c, n, m, t, r, ct, cr, d in rows
    )
    cpu = cpu_name()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (
        f"{cpu}, {os.cpu_count()} cores, load average {load} at the end, torch {torch.__version__}, av {av.__version__}"
    )
    print("\n" + machine + "\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(machine + "\n\n" + table)


if __name__ == "__main__":
    main()
