"""Caption videos, images or folders of them with a generative vidvlm checkpoint.

    python tools/caption_video.py clip.mp4 more/ --format srt --segment 2
    python tools/caption_video.py clip.mp4 --question "which way does it move?" --beam 3
    python tools/caption_video.py clip.mp4 --contact-sheet sheet.png

With no --model the embedded default (vidvlm/assets/default_captioner) is used: a tiny model trained on synthetic
moving shapes only. A file that cannot be read prints one line naming it and the reason; the others are still
captioned, and the exit status is 1 if any file failed (2 for bad arguments or an unloadable model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".gif", ".m4v", ".png", ".jpg", ".jpeg", ".bmp", ".webp")


def expand(inputs: list[str]) -> list[Path]:
    """Files as given, and the video/image files inside given folders (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES))
        else:
            out.append(p)
    return out


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def render(path: Path, segments: list, fmt: str, segmented: bool) -> str:
    """One file's captions as text, SRT, WebVTT or a JSON line."""
    if fmt == "json":
        return json.dumps(
            {"path": str(path), "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in segments]}
        )
    if fmt == "text":
        if not segmented:
            return f"{path}\t{segments[0].text}"
        return "\n".join(f"{path}\t{s.start:.2f}-{s.end:.2f}\t{s.text}" for s in segments)
    sep = "," if fmt == "srt" else "."
    cues = [
        (f"{i}\n" if fmt == "srt" else "") + f"{_clock(s.start, sep)} --> {_clock(s.end, sep)}\n{s.text}\n"
        for i, s in enumerate(segments, 1)
    ]
    return ("WEBVTT\n\n" if fmt == "vtt" else "") + "\n".join(cues)


def contact_sheet(clips: list, texts: list[str], out: Path) -> None:
    """Save the sampled frames (one row per segment) with their captions as one PNG."""
    from PIL import Image, ImageDraw, ImageFont

    thumbs = []
    for clip in clips:
        frames = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in clip]
        frames = [f.resize((128, max(1, round(128 * f.height / f.width)))) for f in frames]
        thumbs.append(frames)
    th = max(f.height for row in thumbs for f in row)
    cols = max(len(row) for row in thumbs)
    font = ImageFont.load_default(size=14)
    line = 22
    width = max(cols * 128, 8 + round(max(font.getlength(t) for t in texts)))
    sheet = Image.new("RGB", (width, len(thumbs) * (th + line)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, text) in enumerate(zip(thumbs, texts, strict=True)):
        y = r * (th + line)
        for c, f in enumerate(row):
            sheet.paste(f, (c * 128, y))
        draw.text((4, y + th + 2), text, fill="black", font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


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
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    from vidvlm.captioning import DEFAULT_MODEL_NOTE, Captioner
    from vidvlm.errors import VidVLMError

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    try:
        cap = Captioner(
            args.model,
            num_frames=args.num_frames,
            sampler=args.sampler,
            fps=args.fps,
            beam=args.beam,
            device=args.device,
        )
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.model is None:
        print(DEFAULT_MODEL_NOTE, file=sys.stderr)
    files = expand(args.inputs)
    if not files:
        print("error: no video or image files found in the inputs", file=sys.stderr)
        return 2
    failed = 0
    bar = tqdm(files, unit="file", disable=args.no_progress or len(files) < 2, file=sys.stderr)
    for i, path in enumerate(bar):
        try:
            segments, clips = cap.caption_file(path, question=args.question, segment=args.segment)
        except (VidVLMError, OSError) as e:  # a bad file is reported and skipped; the run goes on
            failed += 1
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            tqdm.write(f"error: {msg}", file=sys.stderr)
            continue
        tqdm.write(render(path, segments, args.format, args.segment is not None), file=sys.stdout)
        if args.contact_sheet is not None:
            out = args.contact_sheet
            if len(files) > 1:
                out = out.with_name(f"{out.stem}_{i}{out.suffix or '.png'}")
            contact_sheet(clips, [s.text for s in segments], out)
    if failed:
        print(f"{failed} of {len(files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
