"""Talk with a model about a video: several turns, each answer conditioned on the conversation so far.

    python tools/chat_video.py clip.mp4 --model RUN/final --question "what color is it?" --question "and its shape?"
    python tools/chat_video.py clip.mp4 --model RUN/final          # one question per line on standard input

The model must be able to hold a conversation (the pretrained-backbone family, ``llava``); others are refused with
a message naming the family. Each answer is printed as ``A: ...`` after its question. The clip is encoded once, and
the LM keeps its key/value cache between turns (``model.start_chat``): a turn computes its own tokens, not the
clip's and the earlier turns' again. Exit status 2 with one line on bad input (unreadable video, unloadable model).
"""

from __future__ import annotations

import argparse
import sys

from vidvlm.errors import VidVLMError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="a video, GIF or image file")
    p.add_argument("--model", required=True, help="a checkpoint directory of a family that can chat")
    p.add_argument("--question", action="append", help="a question (repeat for more turns); default: stdin lines")
    p.add_argument("--num-frames", type=int, help="frames to sample (default: the model's)")
    p.add_argument("--max-new-tokens", type=int, help="the longest answer in tokens (default: the model's)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.num_frames is not None and args.num_frames < 1:
        print(f"error: --num-frames must be >= 1, got {args.num_frames}", file=sys.stderr)
        return 2
    import torch

    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.data.video import open_video
    from vidvlm.models.base import CHAT
    from vidvlm.models.decoding import DecodeConfig
    from vidvlm.models.registry import load

    try:
        model = load(args.model).to(args.device).eval()
        model.require(CHAT, "chat about a video")
        sampler = build_sampler(
            SamplerConfig(name="uniform", num_frames=args.num_frames or model.num_frames, short_policy="fewer")
        )
        with open_video(args.video) as video:
            idx = sampler(video.metadata, None)
            frames = video.get_frames(list(idx))
            times = torch.tensor([video.metadata.timestamps[i] for i in idx], dtype=torch.float32)
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clip = model.transform(frames)[None].to(args.device)
    session = model.start_chat(clip, times[None].to(args.device))
    questions = args.question if args.question else (line.strip() for line in sys.stdin)
    decode = DecodeConfig("greedy", max_new_tokens=args.max_new_tokens) if args.max_new_tokens else None
    for q in questions:
        if not q:
            continue
        try:
            answer = session.ask(q, decode)
        except VidVLMError as e:  # e.g. the conversation outgrew the LM's context
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"Q: {q}\nA: {answer}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
