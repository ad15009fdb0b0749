"""Feature-extraction throughput: vidvlm.extract_features vs the loop a transformers user would write.

The peer (per video): ``transformers.video_utils.load_video(path, num_frames=F)`` (PyAV, the default
sampler ``i * N // F``), ``CLIPImageProcessor`` on the frames, ``CLIPVisionModel(...).pooler_output`` averaged
over frames. vidvlm: ``extract_features`` on the same HF directory (loaded through ``load_vision_tower``), the same
frame indices (``UniformSampler(F, anchor="start")``), decoding in DataLoader workers, clips batched by shape.
Both produce one pooled vector per video; the script checks they agree (allclose) before timing.

    python benchmarks/bench_extract.py --num-videos 16 --runs 5            # CPU
    python benchmarks/bench_extract.py --device cuda --num-videos 256 --num-workers 8 --batch-size 32
    python benchmarks/bench_extract.py --clip-seconds 60 --clip-wh 1280x720 --tower tiny --num-videos 8   # decode-bound

``--clip-seconds`` writes long clips (H.264, 25 fps, a moving patch; ``bench_caption.write_clip``) instead of the
synthetic shapes; ``--tower tiny`` is a 2-layer, 64-wide CLIP vision tower, so that decoding decides.

Both sides print where their time goes: the peer per stage of its loop; vidvlm through ``extract_features(...,
timings=)``: ``startup`` (until the first batch: worker start-up and its decoding), ``wait_for_data`` (the main
process waiting for later batches), ``decode`` and ``transform`` (summed over videos, in the workers), ``copy``
(host to device), ``forward``. Shard writing is timed by ``--shards``, which also runs ``extract_to_dir``.

Model loading is excluded for both (each loads once). Runs alternate the order of the two methods, so that load
from other processes on a shared machine hits both alike; the median of the runs is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vidvlm.environment import cpu_name

TOWERS = {
    "b32": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2},
}


def make_inputs(
    work: Path,
    num_videos: int,
    clip_frames: int,
    size: int,
    tower: str = "b32",
    seconds: float | None = None,
    wh: str = "1280x720",
) -> tuple[Path, Path]:
    """H.264 clips (synthetic shapes, or ``seconds``-long ``wh`` clips) and a random CLIP vision tower (HF dir)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from vidvlm.data.synthetic import make_synthetic

    if seconds is None:
        clips = work / "clips"
        make_synthetic(clips, num_videos, seed=0, frames=clip_frames, size=size)
        (clips / "manifest.jsonl").unlink()  # only the videos
    else:
        from bench_caption import write_clip  # benchmarks/ is on sys.path when this script runs

        width, height = (int(v) for v in wh.split("x"))
        clips = work / f"clips_{wh}_{seconds:g}s"
        clips.mkdir(parents=True, exist_ok=True)
        for i in range(num_videos):
            if not (clips / f"clip_{i:04d}.mp4").exists():
                write_clip(clips / f"clip_{i:04d}.mp4", seconds, width, height, 25)
    model_dir = work / f"clip-{tower}"
    cfg = CLIPVisionConfig(**TOWERS[tower], patch_size=32, image_size=224)
    torch.manual_seed(0)
    CLIPVisionModel(cfg).save_pretrained(model_dir)
    CLIPImageProcessor().save_pretrained(model_dir)
    return clips, model_dir


def run_peer(
    paths: list[Path], model, processor, num_frames: int, device: str, split: dict[str, float] | None = None
) -> list[torch.Tensor]:
    """The peer loop; with ``split`` it also adds the seconds spent decoding, preprocessing and in the model."""
    from transformers.video_utils import load_video

    out = []
    with torch.inference_mode():
        for p in paths:
            t0 = time.perf_counter()
            frames, _ = load_video(str(p), num_frames=num_frames)  # [F, H, W, 3] uint8
            t1 = time.perf_counter()
            inputs = processor(images=list(frames), return_tensors="pt").to(device)
            t2 = time.perf_counter()
            out.append(model(**inputs).pooler_output.mean(0).float().cpu())  # .cpu() waits for a GPU
            if split is not None:
                t3 = time.perf_counter()
                for stage, dt in (("decode", t1 - t0), ("preprocess", t2 - t1), ("model", t3 - t2)):
                    split[stage] = split.get(stage, 0.0) + dt
    return out


def run_vidvlm(
    paths: list[Path],
    encoder,
    num_frames: int,
    batch_size: int,
    num_workers: int,
    worker_start: str | None,
    timings: dict[str, float] | None = None,
) -> list[torch.Tensor]:
    from vidvlm.data.sampling import UniformSampler
    from vidvlm.extract import extract_features

    sampler = UniformSampler(num_frames, anchor="start", short_policy="fewer")
    res = extract_features(encoder, [str(p) for p in paths], sampler=sampler, batch_size=batch_size,
                           num_workers=num_workers, worker_start=worker_start, timings=timings)  # fmt: skip
    assert all(r.ok for r in res), [r.error for r in res if not r.ok]
    return [r.features for r in res]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-videos", type=int, default=16)
    ap.add_argument("--clip-frames", type=int, default=64, help="frames per generated clip")
    ap.add_argument("--clip-size", type=int, default=224, help="side of the generated clips")
    ap.add_argument("--num-frames", type=int, default=8, help="frames sampled per video")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--worker-start", default="forkserver", help="DataLoader start method (fork, forkserver, spawn)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", help="reuse this folder for clips and model (default: a temp dir)")
    ap.add_argument("--tower", default="b32", choices=sorted(TOWERS), help="CLIP vision tower size (random init)")
    ap.add_argument("--clip-seconds", type=float, default=None, help="long clips of this length instead of shapes")
    ap.add_argument("--clip-wh", default="1280x720", help="WxH of the --clip-seconds clips")
    ap.add_argument("--shards", action="store_true", help="also time extract_to_dir (shard writing) once")
    args = ap.parse_args()

    from transformers import CLIPImageProcessor, CLIPVisionModel

    from vidvlm.extract.encoders import resolve_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    clips, model_dir = make_inputs(work, args.num_videos, args.clip_frames, args.clip_size, args.tower,
                                   args.clip_seconds, args.clip_wh)  # fmt: skip
    paths = sorted(clips.glob("*.mp4"))[: args.num_videos]
    device = torch.device(args.device)
    peer_model = CLIPVisionModel.from_pretrained(model_dir, use_safetensors=True).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    encoder = resolve_model(str(model_dir), "pooled", None, device)

    # Same features first (one warm-up pass each, not timed).
    ref = run_peer(paths, peer_model, processor, args.num_frames, args.device)
    ours = run_vidvlm(paths, encoder, args.num_frames, args.batch_size, args.num_workers, args.worker_start)
    a, b = torch.stack(ref), torch.stack(ours)
    max_diff = (a - b).abs().max().item()
    cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    tol = 1e-3 if device.type == "cpu" else 2e-2  # GPU matmuls use TF32-like reductions in different orders
    assert torch.allclose(a, b, atol=tol, rtol=tol), f"features differ: max |diff| {max_diff:.2e}"

    times: dict[str, list[float]] = {"peer": [], "vidvlm": []}
    split: dict[str, float] = {}  # where the peer's time goes, summed over its timed runs
    stages: dict[str, float] = {}  # where vidvlm's time goes, summed over its timed runs
    for r in range(args.runs):
        order = ["peer", "vidvlm"] if r % 2 == 0 else ["vidvlm", "peer"]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if name == "peer":
                run_peer(paths, peer_model, processor, args.num_frames, args.device, split)
            else:
                run_vidvlm(paths, encoder, args.num_frames, args.batch_size, args.num_workers, args.worker_start,
                           stages)  # fmt: skip
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            print(f"run {r} {name:7s} {args.num_videos / times[name][-1]:7.2f} videos/s", flush=True)

    vps = {k: args.num_videos / statistics.median(v) for k, v in times.items()}
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else cpu_name()
    print(f"\nmachine: {platform.node()} {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    what = (f"{args.clip_frames} frames {args.clip_size}x{args.clip_size}" if args.clip_seconds is None
            else f"{args.clip_seconds:g} s {args.clip_wh} 25 fps")  # fmt: skip
    print(f"videos: {args.num_videos} x {what} H.264; {args.num_frames} frames/video; "
          f"model CLIP vision {args.tower} /32 (random init) at 224")  # fmt: skip
    print(f"same features: max |diff| {max_diff:.2e}, min cosine {cos:.6f}")
    print("| method | median videos/s | runs (videos/s) |")
    print("|---|---|---|")
    for k in ("peer", "vidvlm"):
        runs = ", ".join(f"{args.num_videos / t:.2f}" for t in times[k])
        ours = f"vidvlm.extract_features (batch {args.batch_size}, {args.num_workers} {args.worker_start} workers)"
        label = "transformers load_video + CLIPVisionModel loop" if k == "peer" else ours
        print(f"| {label} | {vps[k]:.2f} | {runs} |")
    print(f"ratio vidvlm / peer: {vps['vidvlm'] / vps['peer']:.2f}x")
    total = sum(split.values())
    shares = ", ".join(
        f"{k} {v / total:.0%} ({1000 * v / (args.runs * args.num_videos):.0f} ms/video)" for k, v in split.items()
    )
    print(f"peer time split: {shares}; the input pipeline alone can speed the peer up at most "
          f"{total / split['model']:.2f}x")  # fmt: skip
    per = args.runs * args.num_videos
    wall = statistics.mean(times["vidvlm"]) * args.runs
    print("vidvlm stages (ms per video; decode and transform are summed over the workers, the rest is the main "
          "process's wall time): " + ", ".join(f"{k} {1000 * v / per:.1f}" for k, v in stages.items())
          + f"; wall {1000 * wall / per:.1f}; decode-bound ceiling {max(args.num_workers, 1)} workers x one worker's "
          f"rate = {max(args.num_workers, 1) * per / stages['decode']:.2f} videos/s")  # fmt: skip
    if args.shards:
        from vidvlm.extract import extract_to_dir

        timings: dict[str, float] = {}
        out = Path(tempfile.mkdtemp(prefix="bench_extract_shards_"))
        t0 = time.perf_counter()
        extract_to_dir(encoder, [str(p) for p in paths], out, shard_size=max(1, args.num_videos // 4),
                       sampler=args.num_frames, batch_size=args.batch_size, num_workers=args.num_workers,
                       worker_start=args.worker_start, timings=timings)  # fmt: skip
        total_s = time.perf_counter() - t0
        print(f"extract_to_dir: {args.num_videos / total_s:.2f} videos/s; shard writing "
              f"{1000 * timings['write_shards'] / args.num_videos:.2f} ms/video in the writer thread, of which the "
              f"main process waited {1000 * timings['wait_for_writer'] / args.num_videos:.2f} ms/video")  # fmt: skip


if __name__ == "__main__":
    main()
