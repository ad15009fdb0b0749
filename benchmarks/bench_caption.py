"""Captioning quality on held-out synthetic clips, decoding speed, and peak memory on long videos.

    OMP_NUM_THREADS=1 python benchmarks/bench_caption.py --model vidvlm/assets/default_captioner \
        --manifest /tmp/shapes32/test/manifest.jsonl [--num-frames 8] [--speed]

Quality: exact match, per-attribute accuracy (colour, shape, size, motion direction; read from the words of the
caption), BLEU-4 / ROUGE-L / CIDEr-D (``vidvlm.eval.caption_metrics``). Make the held-out clips with a seed never
used in training: ``python tools/make_synthetic.py --out /tmp/shapes32/test --num 400 --seed 12345 --frames 8
--size 32 --split test``. Speed: captions per second of greedy decoding (and beam 3) at batch 1 and 16 on
preprocessed clips (decoding of the video files excluded), with the decoder's key/value cache and without
(``decode.use_cache``), the four settings alternating; median of ``--repeats`` runs.

Memory: ``--memory 15 60 600`` writes a clip of each length with PyAV (``--frame-size 1920x1080``, ``--fps 25``, H.264
ultrafast, a moving patch on grey, into ``--clip-dir``; reused when present) and runs ``tools/caption_video.py CLIP
--segment 1`` of the checkout ``--tool-root`` (default: this one) in a child process each, reporting its peak RSS
(``ru_maxrss``), wall time and when its first caption line came out. Compare two checkouts by running it twice
with different ``--tool-root``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidvlm.data.collate import collate_video_text
from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.reader import transform_short_side
from vidvlm.data.sampling import SamplerConfig, build_sampler
from vidvlm.data.synthetic import SHAPES_ATTRIBUTES
from vidvlm.eval.captions import caption_metrics
from vidvlm.models.decoding import DecodeConfig
from vidvlm.models.registry import load


def attribute_of(caption: str, name: str) -> str | None:
    words = caption.split()
    found = [v for v in SHAPES_ATTRIBUTES[name] if v in words]
    return found[0] if len(found) == 1 else None


def quality(model, manifest: str, num_frames: int, batch_size: int = 32) -> dict:
    with open(manifest) as f:
        rows = [json.loads(line) for line in f]
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=num_frames, short_policy="fewer"))
    ds = VideoTextDataset(manifest, sampler, model.transform, train=False)
    preds: dict[str, str] = {}
    for batch in DataLoader(ds, batch_size=batch_size, collate_fn=collate_video_text):
        texts = model.generate(batch["video"], batch["frame_mask"])
        for i, t in zip(batch["index"].tolist(), texts, strict=True):
            preds[str(i)] = t
    refs = {str(i): [r["caption"]] for i, r in enumerate(rows)}
    out = {"num": len(rows), "exact_match": sum(preds[k] == refs[k][0] for k in refs) / len(rows)}
    for name in SHAPES_ATTRIBUTES:
        out[f"acc_{name}"] = sum(
            attribute_of(preds[str(i)], name) == r["attributes"].get(name) for i, r in enumerate(rows)
        ) / len(rows)
    out.update({k: v for k, v in caption_metrics(refs, preds).items() if k != "num"})
    return out


def speed(model, num_frames: int, batch: int, decodes: dict[str, DecodeConfig], repeats: int) -> dict[str, float]:
    """Captions per second of each decoding setting, the settings alternating within each repeat (one interleaved
    run); medians over repeats."""
    size = transform_short_side(model.transform)  # the model's input side
    video = torch.randn(batch, num_frames, 3, size, size)
    for decode in decodes.values():
        model.generate(video, decode=decode)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in decodes}
    for _ in range(repeats):
        for name, decode in decodes.items():
            t = time.perf_counter()
            model.generate(video, decode=decode)
            times[name].append(time.perf_counter() - t)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def write_clip(path: Path, seconds: float, width: int, height: int, fps: int) -> None:
    """An H.264 clip of ``seconds`` at ``width`` x ``height``: a bright patch moving over grey (written as YUV)."""
    import av
    import numpy as np

    tmp = path.with_name(path.name + ".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        background = np.full((height * 3 // 2, width), 128, np.uint8)  # Y plane, then U and V
        background[:height] = 90
        side = height // 5
        for i in range(int(seconds * fps)):
            frame = background.copy()
            x = (i * 13) % (width - side)
            frame[2 * side : 3 * side, x : x + side] = 200
            frame[height + side // 2 : height + side, x // 2 : (x + side) // 2] = 60
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)


_PEAK = """
import resource, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
first = child.stdout.readline() and time.perf_counter() - start
child.stdout.read()
rc = child.wait()
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc, first or -1)
"""


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, float]:
    """Peak RSS (MB), wall seconds and exit status of ``cmd`` run alone in a child, and when it printed its first
    line (seconds)."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _PEAK, *cmd], env=env, capture_output=True, text=True, check=True)
    kb, rc, first = res.stdout.split()
    return int(kb) / 1024, time.perf_counter() - start, int(rc), float(first)


def memory(args: argparse.Namespace) -> list[dict]:
    width, height = (int(v) for v in args.frame_size.split("x"))
    root = Path(args.tool_root).resolve()
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    clip_dir = Path(args.clip_dir)
    clip_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for seconds in args.memory:
        clip = clip_dir / f"clip_{width}x{height}_{args.fps}fps_{seconds:g}s.mp4"
        if not clip.exists():
            write_clip(clip, seconds, width, height, args.fps)
        cmd = [sys.executable, str(root / "tools" / "caption_video.py"), str(clip), "--segment", "1", "--no-progress"]
        if args.model:
            cmd += ["--model", args.model]
        mb, wall, rc, first = peak_rss(cmd, env)
        rows.append({"seconds": seconds, "frame_size": args.frame_size, "fps": args.fps, "peak_rss_mb": round(mb),
                     "wall_s": round(wall, 1), "first_line_s": round(first, 1), "exit": rc,
                     "tool_root": str(root)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (required except for --memory: the default captioner)")
    p.add_argument("--manifest", default=None)
    p.add_argument("--num-frames", type=int, default=None)
    p.add_argument("--speed", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--memory", type=float, nargs="+", metavar="SECONDS", help="peak RSS of --segment 1 captioning")
    p.add_argument("--frame-size", default="1920x1080", help="WxH of the --memory clips")
    p.add_argument("--fps", type=int, default=25, help="frame rate of the --memory clips")
    p.add_argument("--clip-dir", default="/tmp/vidvlm_bench_caption", help="where the --memory clips are kept")
    p.add_argument("--tool-root", default=str(Path(__file__).resolve().parents[1]), help="checkout to measure")
    args = p.parse_args()
    if args.memory:
        memory(args)
        return
    if args.model is None:
        p.error("--model is required (except with --memory)")
    torch.manual_seed(0)
    model = load(args.model).eval()
    n = args.num_frames or model.num_frames
    result: dict = {"model": args.model, "num_frames": n, "threads": torch.get_num_threads()}
    if args.manifest:
        result["quality"] = quality(model, args.manifest, n)
    if args.speed:
        fixed = dict(max_new_tokens=model.config.decode.max_new_tokens)
        decodes = {
            f"{name}{suffix}": DecodeConfig(strategy, num_beams=3, use_cache=not suffix, **fixed)
            for name, strategy in (("greedy", "greedy"), ("beam3", "beam"))
            for suffix in ("", "_no_cache")
        }
        for b in (1, 16):
            for name, rate in speed(model, n, b, decodes, args.repeats).items():
                result[f"captions_per_s_{name}_b{b}"] = round(rate, 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
