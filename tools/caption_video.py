"""Caption videos, images or folders of them with a generative vidvlm checkpoint.

    python tools/caption_video.py clip.mp4 more/ --format srt --segment 2
    python tools/caption_video.py clip.mp4 --question "which way does it move?" --beam 3
    python tools/caption_video.py clip.mp4 --contact-sheet sheet.png

Inputs are files, folders (their video, GIF and image files, recursively), .txt file lists and .jsonl/.csv
manifests, listed as tools/extract_features.py lists them. Frames are decoded near the model's input size and the
windows of --segment are captioned --batch-size at a time and printed as they are done, so a long video needs no
more memory than a short one.

With no --model the embedded default (vidvlm/assets/default_captioner) is used: a tiny model trained on synthetic
moving shapes only. A file that cannot be read, or a contact sheet that cannot be written, prints one line naming it
and the reason; the other files are still captioned, and the exit status is 1 if anything failed (2 for bad
arguments or an unloadable model).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(path: Path, segments: Iterable, fmt: str, segmented: bool) -> Iterator[str]:
    """One file's captions as text, SRT, WebVTT or a JSON line, in pieces written as segments arrive.

    ``text``, ``srt`` and ``vtt`` give one piece per segment (printed as soon as it is captioned); ``json`` gives
    one line per file, after its last segment.
    """
    if fmt == "json":
        segs = [{"start": s.start, "end": s.end, "text": s.text} for s in segments]
        yield json.dumps({"path": str(path), "segments": segs}) + "\n"
        return
    sep = "," if fmt == "srt" else "."
    for i, s in enumerate(segments, 1):
        if fmt == "text":
            yield f"{path}\t{s.start:.2f}-{s.end:.2f}\t{s.text}\n" if segmented else f"{path}\t{s.text}\n"
            continue
        head = "WEBVTT\n\n" if fmt == "vtt" and i == 1 else ""
        number = f"{i}\n" if fmt == "srt" else ""
        yield f"{head}{number}{_clock(s.start, sep)} --> {_clock(s.end, sep)}\n{s.text}\n\n"


def thumbnails(clip) -> list:
    """The frames of a uint8 ``[T, 3, H, W]`` clip as 128-pixel-wide PIL images (what a contact sheet keeps)."""
    from einops import rearrange
    from PIL import Image

    frames = [Image.fromarray(rearrange(f, "c h w -> h w c").numpy()) for f in clip]
    return [f.resize((128, max(1, round(128 * f.height / f.width)))) for f in frames]


def contact_sheet(rows: list[list], texts: list[str], out: Path) -> None:
    """Save thumbnail rows (one per segment, from :func:`thumbnails`) with their captions as one PNG.

    Raises:
        OSError: the file cannot be written. ValueError: PIL does not know the file's extension.
    """
    from PIL import Image, ImageDraw, ImageFont

    from vidvlm.atomic import write_atomic

    th = max(f.height for row in rows for f in row)
    cols = max(len(row) for row in rows)
    font = ImageFont.load_default(size=14)
    line = 22
    width = max(cols * 128, 8 + round(max(font.getlength(t) for t in texts)))
    sheet = Image.new("RGB", (width, len(rows) * (th + line)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, text) in enumerate(zip(rows, texts, strict=True)):
        y = r * (th + line)
        for c, f in enumerate(row):
            sheet.paste(f, (c * 128, y))
        draw.text((4, y + th + 2), text, fill="black", font=font)
    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown file extension {out.suffix!r} (use .png or .jpg)")
    write_atomic(out, lambda tmp: sheet.save(tmp, format=fmt))  # a reader never sees half a sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="VIDEO_OR_FOLDER")
    parser.add_argument("--model", help="checkpoint directory (default: the embedded synthetic-shapes captioner)")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per caption (default: the model's)")
    parser.add_argument("--sampler", default="uniform", choices=["uniform", "fps", "all"])
    parser.add_argument("--fps", type=float, default=2.0, help="rate of the fps sampler")
    parser.add_argument("--beam", type=int, default=1, help="beam width (1 = greedy)")
    parser.add_argument("--question", default=None, help="answer this question instead of captioning")
    parser.add_argument("--segment", type=float, default=None, metavar="SECONDS", help="caption consecutive windows")
    parser.add_argument("--format", default="text", choices=["text", "json", "srt", "vtt"])
    parser.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="save the sampled frames and caption as one image (with several inputs: NAME_<i>.png)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--batch-size", type=int, default=8, help="windows captioned per model call")
    args = parser.parse_args(argv)
    for flag, value in (("--num-frames", args.num_frames), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            print(f"error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    if args.segment is not None and not 0 < args.segment < float("inf"):
        print(f"error: --segment must be a number of seconds > 0, got {args.segment}", file=sys.stderr)
        return 2

    import torch
    from tqdm import tqdm

    from vidvlm.captioning import DEFAULT_MODEL_NOTE, Captioner
    from vidvlm.errors import VidVLMError
    from vidvlm.extract.sources import list_sources

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    try:
        files = [Path(f) for f in list_sources(args.inputs)]
        cap = Captioner(
            args.model,
            num_frames=args.num_frames,
            sampler=args.sampler,
            fps=args.fps,
            beam=args.beam,
            device=args.device,
            batch_size=args.batch_size,
        )
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.model is None:
        print(DEFAULT_MODEL_NOTE, file=sys.stderr)
    if not files:
        print("error: no video or image files found in the inputs", file=sys.stderr)
        return 2
    failed = 0
    bar = tqdm(files, unit="file", disable=args.no_progress or len(files) < 2, file=sys.stderr)
    for i, path in enumerate(bar):
        rows: list[list] = []
        texts: list[str] = []

        def segments(path=path, rows=rows, texts=texts):
            for seg, clip in cap.iter_segments(path, question=args.question, segment=args.segment):
                if args.contact_sheet is not None:
                    rows.append(thumbnails(clip))
                    texts.append(seg.text)
                yield seg

        try:
            for piece in render(path, segments(), args.format, args.segment is not None):
                tqdm.write(piece, file=sys.stdout, end="")
                sys.stdout.flush()
        except (VidVLMError, OSError) as e:  # a bad file is reported and skipped; the run goes on
            failed += 1
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            tqdm.write(f"error: {msg}", file=sys.stderr)
            continue
        if args.contact_sheet is not None:
            out = args.contact_sheet
            if len(files) > 1:
                out = out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}")
            try:
                contact_sheet(rows, texts, out)
            except (OSError, ValueError) as e:  # an unwritable sheet is reported; the other files go on
                failed += 1
                tqdm.write(f"error: {out}: cannot write the contact sheet: {e}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
