"""Clips per second that the input pipeline delivers to a training step: vidvlm against the datasets users write.

Each pipeline reads a manifest of clips, samples 8 frames per clip uniformly, resizes to 224 short side, centre-crops
224x224, normalises to float, and batches 4 clips through a ``torch.utils.data.DataLoader`` with 2 or 4 workers:

- vidvlm: ``VideoTextDataset`` (``UniformSampler(8)``, ``build_transform(224)``, ``decode_size=224``) +
  ``collate_video_text``; the frame index is built in each worker (no disk index cache);
- torchcodec, as its docs show: ``VideoDecoder(path, seek_mode="approximate", transforms=[Resize])`` (decode-time
  scaling, one FFmpeg thread), ``get_frames_at``, torchvision ``v2`` crop and normalisation;
- transformers, as its docs show: ``load_video(path, num_frames=8)`` (its default backend, PyAV), then the same
  torchvision ``v2`` resize, crop and normalisation.

A run iterates one epoch over the manifest (each file listed several times, shuffled with a fixed seed) and times it
whole, from creating the iterator to the last batch (timing from the first batch instead would credit the work the
other workers did meanwhile). Pipelines run interleaved, in rotating order, and the median over repeats is reported.
Each row also gives the CPU a clip cost inside its worker (``time.thread_time`` around ``__getitem__``: decoding,
sampling, transforms; not collation) and the faster peer's CPU per clip over this one's: the rate ratio a pipeline
would reach if every pipeline turned its workers' CPU into clips equally well, so a rate ratio below it is lost to
start-up, collation, transfer or contention, not to the per-clip work. The last column accounts for all of it: the
CPU of the whole epoch per clip delivered, every worker process's (``RUSAGE_CHILDREN`` once the epoch's workers have
ended: start-up, decoding, collation, sending) and the main process's (receiving). Optional peers that do not import
are skipped.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_pipeline.py [--repeats 3] [--cache /tmp/vidvlm_bench_pipeline]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch  # before decord (decord#251)
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_decode import make_clip  # noqa: E402 - the benchmark folder is not a package

from vidvlm.data.collate import collate_video_text  # noqa: E402
from vidvlm.data.datasets import VideoTextDataset  # noqa: E402
from vidvlm.data.sampling import UniformSampler  # noqa: E402
from vidvlm.data.transforms import build_transform  # noqa: E402

FRAMES, SIZE, BATCH = 8, 224, 4
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP, as build_transform


def torchvision_transform() -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(SIZE, antialias=True),
            v2.CenterCrop(SIZE),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


class TorchcodecDataset(Dataset):
    """What the torchcodec docs show: a decoder per item, frames at uniform indices, torchvision transforms."""

    def __init__(self, paths: list[str]) -> None:
        from torchcodec.decoders import VideoDecoder  # noqa: F401 - fail at construction when missing

        self.paths, self.transform = paths, torchvision_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        import av
        from torchcodec.decoders import VideoDecoder
        from torchcodec.transforms import Resize

        with av.open(self.paths[i]) as probe:  # decode-time Resize needs the output size
            h, w = probe.streams.video[0].height, probe.streams.video[0].width
        out = (SIZE, round(w * SIZE / h)) if h <= w else (round(h * SIZE / w), SIZE)
        decoder = VideoDecoder(self.paths[i], seek_mode="approximate", num_ffmpeg_threads=1, transforms=[Resize(out)])
        n = decoder.metadata.num_frames
        idx = np.linspace(0, n - 1, FRAMES).round().astype(int).tolist()
        return self.transform(decoder.get_frames_at(idx).data)


class LoadVideoDataset(Dataset):
    """What the transformers docs show: ``load_video(path, num_frames=8)`` and torchvision transforms."""

    def __init__(self, paths: list[str]) -> None:
        from transformers.video_utils import load_video  # noqa: F401

        self.paths, self.transform = paths, torchvision_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from transformers.video_utils import load_video

        frames, _ = load_video(self.paths[i], num_frames=FRAMES)
        return self.transform(torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2))


def stack(samples: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"video": torch.stack(samples)}


def write_manifest(folder: str, paths: list[str]) -> str:
    manifest = os.path.join(folder, "manifest.jsonl")
    with open(manifest, "w") as f:
        for p in paths:
            f.write(json.dumps({"path": p, "caption": "a moving gradient"}) + "\n")
    return manifest


class ItemCpu(Dataset):
    """Wraps a dataset: each item comes with the CPU its ``__getitem__`` took on the worker's thread (ms)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[object, float]:
        start = time.thread_time()
        item = self.dataset[i]
        return item, (time.thread_time() - start) * 1000


def with_item_cpu(collate: Callable) -> Callable:
    def collate_timed(samples: list[tuple[object, float]]) -> dict:
        batch = collate([item for item, _ in samples])
        batch["_item_cpu_ms"] = [ms for _, ms in samples]
        return batch

    return collate_timed


def process_cpu_ms() -> tuple[float, float]:
    """CPU (user + system, ms) of this process and of its children that have ended (the DataLoader's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime) * 1000, (children.ru_utime + children.ru_stime) * 1000


def clips_per_second(dataset: Dataset, collate: Callable, workers: int, seed: int) -> tuple[float, list[float], dict]:
    """One epoch: clips per second, the CPU each clip cost inside its worker (ms), and the epoch's whole CPU per clip.

    The last is ``{"workers": ms, "main": ms}``: every worker process's CPU (start-up, decoding, collation, sending)
    and the main process's (receiving the batches), each over the clips delivered. The workers are counted when they
    end, which a non-persistent DataLoader makes them do at the end of the epoch.
    """
    loader = DataLoader(
        ItemCpu(dataset),
        batch_size=BATCH,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        collate_fn=with_item_cpu(collate),
        drop_last=True,
    )
    main0, workers0 = process_cpu_ms()
    clips, cpu, start = 0, [], time.perf_counter()  # the whole epoch, worker start-up included (a fork: tens of ms)
    for batch in loader:
        assert batch["video"].shape[1:] == (FRAMES, 3, SIZE, SIZE), batch["video"].shape
        clips += batch["video"].shape[0]
        cpu += batch["_item_cpu_ms"]
    rate = clips / (time.perf_counter() - start)
    # the exhausted iterator has joined its workers (they are not persistent), so RUSAGE_CHILDREN now counts them
    main1, workers1 = process_cpu_ms()
    return rate, cpu, {"workers": (workers1 - workers0) / clips, "main": (main1 - main0) / clips}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--files", type=int, default=6, help="distinct clips per resolution")
    parser.add_argument(
        "--passes",
        type=int,
        default=12,
        help="times each file is listed in the manifest (12: 72 clips, an even 18 batches)",
    )
    parser.add_argument("--workers", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--cache", default="/tmp/vidvlm_bench_pipeline")
    parser.add_argument("--out", default="")
    parser.add_argument("--sets", nargs="*", default=["720p", "240p"], choices=["720p", "240p"], help="clip sets")
    args = parser.parse_args()
    sets = {
        "720p, 6-11 s, GOP 125, B-frames": (1280, 720, 6),
        "240p, 60-65 s, GOP 125, B-frames": (426, 240, 60),
    }
    sets = {name: spec for name, spec in sets.items() if name.split(",")[0] in args.sets}
    rows = []
    for set_name, (w, h, seconds) in sets.items():
        folder = os.path.join(args.cache, f"{h}p")
        os.makedirs(folder, exist_ok=True)
        files = [make_clip(os.path.join(folder, f"clip{i}.mp4"), w, h, seconds + i, gop=125) for i in range(args.files)]
        paths = files * args.passes
        manifest = write_manifest(folder, paths)
        pipelines: dict[str, tuple[Dataset, Callable]] = {
            "vidvlm VideoTextDataset": (
                VideoTextDataset(manifest, UniformSampler(FRAMES), build_transform(SIZE), decode_size=SIZE),
                collate_video_text,
            )
        }
        for name, cls in (
            ("torchcodec dataset", TorchcodecDataset),
            ("transformers load_video dataset", LoadVideoDataset),
        ):
            try:
                pipelines[name] = (cls(paths), stack)
            except (ImportError, RuntimeError, OSError) as err:  # torchcodec without FFmpeg's libraries
                print(f"skipping {name}: {err}")
        for workers in args.workers:
            rates: dict[str, list[float]] = {p: [] for p in pipelines}
            item_cpu: dict[str, list[float]] = {p: [] for p in pipelines}
            epoch_cpu: dict[str, list[dict]] = {p: [] for p in pipelines}
            names = list(pipelines)
            for r in range(args.repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    dataset, collate = pipelines[name]
                    rate, cpu, whole = clips_per_second(dataset, collate, workers, seed=r)
                    rates[name].append(rate)
                    item_cpu[name] += cpu
                    epoch_cpu[name].append(whole)
            med = {p: statistics.median(v) for p, v in rates.items()}
            cpu_med = {p: statistics.median(v) for p, v in item_cpu.items()}
            peers = [p for p in pipelines if not p.startswith("vidvlm")]
            best = max(peers or ["vidvlm VideoTextDataset"], key=med.get)
            for name in pipelines:
                # the CPU ratio (the faster peer's CPU per clip over this pipeline's) is what the rate ratio would be
                # if every pipeline turned its workers' CPU into clips equally well
                rate_ratio, cpu_ratio = med[name] / med[best], cpu_med[best] / cpu_med[name]
                worker_ms = statistics.median(e["workers"] for e in epoch_cpu[name])
                main_ms = statistics.median(e["main"] for e in epoch_cpu[name])
                row = (set_name, workers, name, med[name], rate_ratio, cpu_med[name], cpu_ratio, worker_ms, main_ms)
                rows.append(row)
                print(
                    f"{set_name:34s} workers={workers} {name:32s} {med[name]:7.2f} clips/s  x{rate_ratio:.2f}  "
                    f"CPU per clip in a worker {cpu_med[name]:6.1f} ms  x{cpu_ratio:.2f}  "
                    f"whole epoch per clip: workers {worker_ms:6.1f} ms, main {main_ms:5.1f} ms",
                    flush=True,
                )
    header = (
        "| clips | workers | pipeline | clips/s (median) | ratio to the faster peer | CPU per clip in a worker, ms "
        "(median) | the faster peer's CPU per clip / this one's | the epoch's CPU per clip, workers / main, ms |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {c} | {w} | {p} | {v:.2f} | {ratio:.2f} | {ms:.1f} | {cr:.2f} | {wm:.1f} / {mm:.1f} |\n"
        for c, w, p, v, ratio, ms, cr, wm, mm in rows
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = f"{os.cpu_count()} cores, load average {load} at the end, torch {torch.__version__}"
    print("\n" + machine + "\n" + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(machine + "\n\n" + table)


if __name__ == "__main__":
    main()
