"""Extract video/image features into resumable safetensors shards.

    python tools/extract_features.py VIDEOS/ --out feats/ --model CKPT_DIR [--level pooled] [--num-frames 8]

SOURCE may be files, folders (their video, GIF and image files, recursively), a .txt file list or a .jsonl/.csv
manifest (whose entries are relative to its folder and may not lead out of it). The output directory holds
``shard-*.safetensors``, ``index.jsonl`` (one line per source: shard, rows, timestamps, or error), ``extract.json``
(the settings) and ``extract.lock`` (held while a run writes: a second run into the same directory is refused).
Rerunning the same command skips every source already indexed.

Exit status: 0 when every source of this run was extracted; 1 when some failed (everything that worked is written,
and the failures are listed with their reason in index.jsonl); 2 for bad arguments, an unusable model or output
directory. Workers exit with the main process, also when it is killed.
"""

from __future__ import annotations

import argparse
import sys

from vidvlm.errors import VidVLMError
from vidvlm.extract import extract_to_dir
from vidvlm.extract.result import LEVELS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="files, folders, .txt lists, .jsonl/.csv manifests")
    p.add_argument("--out", required=True, help="output directory (resumed when it exists)")
    p.add_argument("--model", required=True, help="vidvlm checkpoint dir, HF CLIP/SigLIP dir, or timm:<name>")
    p.add_argument("--weights", help="local weights file for a timm:<name> tower")
    p.add_argument("--level", default="pooled", choices=LEVELS)
    p.add_argument("--layers", type=int, nargs="+", help="hidden-state indices for --level layers (e.g. -1 -4)")
    p.add_argument("--num-frames", type=int, default=8, help="frames sampled uniformly per clip")
    p.add_argument("--num-clips", type=int, default=1, help="test-time clips per video (pooled: averaged)")
    p.add_argument("--size", type=int, help="decode-time short side (speeds up large videos)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--worker-start", choices=["fork", "forkserver", "spawn"], help="worker start method "
                   "(default forkserver: clean, slower to start; fork: instant)")  # fmt: skip
    p.add_argument("--shard-size", type=int, default=1000, help="sources per shard")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--retry-failed", action="store_true", help="retry sources that failed in an earlier run")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = extract_to_dir(
            args.model,
            args.sources,
            args.out,
            shard_size=args.shard_size,
            retry_failed=args.retry_failed,
            progress=not args.no_progress,
            level=args.level,
            layers=args.layers,
            sampler=args.num_frames,
            num_clips=args.num_clips,
            size=args.size,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            weights=args.weights,
            worker_start=args.worker_start,
        )
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}, "
        f"{summary.seconds:.1f} s, {summary.videos_per_second:.2f} videos/s -> {args.out}/index.jsonl"
    )
    if summary.failed:
        print(f"{summary.failed} source(s) failed; they are listed with their reason in {args.out}/index.jsonl "
              "(key 'error')", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
