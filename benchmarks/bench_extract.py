"""Feature-extraction throughput: vidvlm.extract_features vs the loop a transformers user would write.

The peer (per video): ``transformers.video_utils.load_video(path, num_frames=F)`` (PyAV, the default
sampler ``i * N // F``), ``CLIPImageProcessor`` on the frames, ``CLIPVisionModel(...).pooler_output`` averaged
over frames. vidvlm: ``extract_features`` on the same HF directory (loaded through ``load_vision_tower``), the same
frame indices (``UniformSampler(F, anchor="start")``), decoding in DataLoader workers, clips batched by shape.
Both produce one pooled vector per video; the script checks they agree (allclose) before timing.

    python benchmarks/bench_extract.py --num-videos 16 --runs 5            # CPU
    python benchmarks/bench_extract.py --device cuda --num-videos 256 --num-workers 8 --batch-size 32

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


def make_inputs(work: Path, num_videos: int, clip_frames: int, size: int) -> tuple[Path, Path]:
    """Synthetic H.264 clips and a random ViT-B/32 CLIP vision model saved as an HF directory."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from vidvlm.data.synthetic import make_synthetic

    clips = work / "clips"
    make_synthetic(clips, num_videos, seed=0, frames=clip_frames, size=size)
    (clips / "manifest.jsonl").unlink()  # only the videos
    model_dir = work / "clip-b32"
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           patch_size=32, image_size=224)  # fmt: skip
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
    paths: list[Path], encoder, num_frames: int, batch_size: int, num_workers: int, worker_start: str | None
) -> list[torch.Tensor]:
    from vidvlm.data.sampling import UniformSampler
    from vidvlm.extract import extract_features

    sampler = UniformSampler(num_frames, anchor="start", short_policy="fewer")
    res = extract_features(encoder, [str(p) for p in paths], sampler=sampler, batch_size=batch_size,
                           num_workers=num_workers, worker_start=worker_start)  # fmt: skip
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
    args = ap.parse_args()

    from transformers import CLIPImageProcessor, CLIPVisionModel

    from vidvlm.extract.encoders import resolve_model

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    clips, model_dir = make_inputs(work, args.num_videos, args.clip_frames, args.clip_size)
    paths = sorted(clips.glob("*.mp4"))
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
    for r in range(args.runs):
        order = ["peer", "vidvlm"] if r % 2 == 0 else ["vidvlm", "peer"]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            if name == "peer":
                run_peer(paths, peer_model, processor, args.num_frames, args.device, split)
            else:
                run_vidvlm(paths, encoder, args.num_frames, args.batch_size, args.num_workers, args.worker_start)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
            print(f"run {r} {name:7s} {args.num_videos / times[name][-1]:7.2f} videos/s", flush=True)

    vps = {k: args.num_videos / statistics.median(v) for k, v in times.items()}
    dev = torch.cuda.get_device_name(0) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    print(f"\nmachine: {platform.node()} {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"videos: {args.num_videos} x {args.clip_frames} frames {args.clip_size}x{args.clip_size} H.264; "
          f"{args.num_frames} frames/video; model ViT-B/32 (random init) at 224")  # fmt: skip
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


if __name__ == "__main__":
    main()
