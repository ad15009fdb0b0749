"""Write the moving-shapes video-text data set: clips (or stills) and DIR/manifest.jsonl, or a text-only corpus.

python tools/make_synthetic.py --out data/shapes/train --num 512 --seed 0
python tools/make_synthetic.py --out data/shapes/val --num 128 --seed 0 --split val
python tools/make_synthetic.py --out data/shapes/images --num 256 --seed 0 --images

Scenes of one to three shapes with timed events, conversations and questions, and the compositional split (the
colour-shape pairs of vidvlm.data.synthetic.HELD_OUT_PAIRS kept out of train/val/test, drawn alone in
"compositional"):

python tools/make_synthetic.py --out data/scenes/train --num 512 --shapes 1 3 --events --conversations --compositional
python tools/make_synthetic.py --out data/scenes/comp --num 128 --shapes 1 3 --events --conversations \\
    --split compositional

Text only (DIR/text.jsonl, rows {"text": ...}): python tools/make_synthetic.py --out data/text --num 10000 --text
"""

from __future__ import annotations

import argparse
import sys
import time

from vidvlm.data.synthetic import make_synthetic
from vidvlm.data.synthetic_qa import make_text_corpus
from vidvlm.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created when missing)")
    parser.add_argument("--num", type=int, required=True, help="number of clips (or text rows with --text)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even, >= 32)")
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument(
        "--split",
        default="train",
        choices=["train", "val", "test", "compositional"],
        help="random stream: splits made with one seed share no clips; compositional draws only held-out pairs",
    )
    parser.add_argument("--images", action="store_true", help="write PNG stills with motion-free captions")
    parser.add_argument(
        "--shapes", type=int, nargs="+", metavar="N", help="shapes per scene: N, or MIN MAX (within 1..3)"
    )
    parser.add_argument("--events", action="store_true", help="timed events: appear, disappear, start, stop, turn")
    parser.add_argument("--conversations", action="store_true", help="add conversation and qa to every row")
    parser.add_argument(
        "--compositional", action="store_true", help="train/val/test: leave out the held-out colour-shape pairs"
    )
    parser.add_argument(
        "--qa-per-shape",
        nargs="+",
        default=[],
        choices=["color", "shape", "size", "direction"],
        metavar="TYPE",
        help="with --conversations: ask these question types about every shape of a scene, not one",
    )
    parser.add_argument(
        "--negatives", action="store_true", help="add hard negative captions (one detail of motion changed)"
    )
    parser.add_argument(
        "--timed-captions", action="store_true", help="with --events: captions say when each event happens"
    )
    parser.add_argument("--text", action="store_true", help="write the text-only corpus OUT/text.jsonl instead")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.text:
            path = make_text_corpus(args.out, args.num, args.seed, compositional=args.compositional)
            print(f"wrote {args.num} text rows to {path} in {time.perf_counter() - start:.1f} s")
            return 0
        shapes = None if args.shapes is None else args.shapes[0] if len(args.shapes) == 1 else args.shapes
        manifest = make_synthetic(
            args.out,
            args.num,
            args.seed,
            frames=args.frames,
            size=args.size,
            images=args.images,
            split=args.split,
            fps=args.fps,
            shapes=shapes,
            events=args.events,
            conversations=args.conversations,
            compositional=args.compositional,
            qa_per_shape=args.qa_per_shape,
            negatives=args.negatives,
            timed_captions=args.timed_captions,
        )
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "images" if args.images else "clips"
    print(f"wrote {args.num} {kind} and {manifest} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
