"""Write a standalone copy of a run; for a pretrained-backbone (llava) run, LoRA merged and the LM and tower inside.

    python tools/export_llava.py RUN/final --out DIR [--overwrite]

A run stores only what it trained and names its frozen bases (the LM, a pretrained tower) by path and sha256, so
it needs them to load. The exported directory holds everything: ``vidvlm.load(DIR)`` works with no base present,
and its outputs equal the run's (LoRA merged). Exit status 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from vidvlm.errors import VidVLMError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a llava checkpoint directory (e.g. RUN/final)")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: --out {out} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        from vidvlm.models.base import GENERATE
        from vidvlm.models.registry import load

        model = load(args.run)
        model.require(GENERATE, "be exported as a standalone generating model")
        out.parent.mkdir(parents=True, exist_ok=True)
        # a private folder beside --out, renamed into place: two exports never write into one folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.export(tmp)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing left behind when the export failed
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
