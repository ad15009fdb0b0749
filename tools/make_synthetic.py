"""Write the moving-shapes video-text data set: clips (or stills) and DIR/manifest.jsonl.

python tools/make_synthetic.py --out data/shapes/train --num 512 --seed 0
python tools/make_synthetic.py --out data/shapes/val --num 128 --seed 0 --split val
python tools/make_synthetic.py --out data/shapes/images --num 256 --seed 0 --images
"""

from __future__ import annotations

import argparse
import time

from vidvlm.data.synthetic import make_synthetic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created when missing)")
    parser.add_argument("--num", type=int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even, >= 32)")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument(
        "--split",
        default="train",
        choices=["train", "val", "test"],
        help="random stream: splits made with one seed share no clips",
    )
    parser.add_argument("--images", action="store_true", help="write PNG stills with motion-free captions")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    manifest = make_synthetic(
        args.out,
        args.num,
        args.seed,
        frames=args.frames,
        size=args.size,
        images=args.images,
        split=args.split,
        fps=args.fps,
    )
    print(
        f"wrote {args.num} {'images' if args.images else 'clips'} and {manifest} in {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
