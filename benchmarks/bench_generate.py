"""Time autoregressive decoding with vidvlm's own decoders: the key/value cache, no cache, and HF GPT-2.

    python benchmarks/bench_generate.py [--threads 1] [--batch 16] [--repeats 5] [--device cpu] [--json out.json]

Three cases, each decoding a fixed number of tokens (no EOS can end a row early, so every side does the same work):

* ``caption``: a CoCa-style multimodal decoder (vidvlm ``CrossAttentionDecoder`` with no unimodal blocks, so each
  block is self-attention, cross-attention to the visual tokens and an MLP) against ``GPT2LMHeadModel`` built
  with ``add_cross_attention=True`` at the same width, depth, heads and MLP width: the decoder a user would take
  from transformers for a captioner (it is what ``VisionEncoderDecoderModel`` builds). Visual tokens are random
  ``[B, M, D]``; greedy and beam search (4 beams) from BOS.
* ``caption_default``: the same at the embedded default captioner's size (width 64, 3 blocks, M = 128, 15 tokens).
* ``early_fusion``: a causal decoder (vidvlm ``CausalDecoder``) writing a clip's 64 visual ids after a 16-token
  caption, greedy, as ``EarlyFusion.generate_video`` does, against ``GPT2LMHeadModel`` without cross-attention.

vidvlm runs through ``vidvlm.models.decoding.generate`` with the same steppers as ``model.generate``:
``Cached`` (``decode.use_cache: true``, the default) and ``Recompute`` (``use_cache: false``). HF runs
``model.generate(use_cache=True)``. Weights are random; the sides alternate within each round, medians over
rounds; for equal weights vidvlm's two paths give the same ids (checked here on every round). ``--device cuda``
runs every side on the GPU in float32 (each timing ends with a synchronisation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

from vidvlm.environment import cpu_name
from vidvlm.models.decoder import CausalDecoder, CrossAttentionDecoder, DecoderConfig
from vidvlm.models.decoding import Cached, DecodeConfig, generate

CASES = {
    # name: width, layers, heads, visual tokens M (0: none, the prompt is text), prompt length, new tokens, vocab
    "caption": dict(width=256, layers=4, heads=4, m=64, prompt=1, new=31, vocab=1000),
    "caption_default": dict(width=64, layers=3, heads=4, m=128, prompt=1, new=15, vocab=48),
    "early_fusion": dict(width=256, layers=4, heads=4, m=0, prompt=16, new=64, vocab=1000 + 4096),
}


def vidvlm_decoder(case: dict):
    cfg = DecoderConfig(
        width=case["width"],
        num_heads=case["heads"],
        text_depth=0,
        depth=case["layers"],
        max_len=case["prompt"] + case["new"] + 1,
        vocab_size=case["vocab"],
    )
    return (CausalDecoder if case["m"] == 0 else CrossAttentionDecoder)(cfg).eval()


def hf_decoder(case: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=case["vocab"],
        n_positions=case["prompt"] + case["new"] + 1,
        n_embd=case["width"],
        n_layer=case["layers"],
        n_head=case["heads"],
        add_cross_attention=case["m"] > 0,
        bos_token_id=0,
        eos_token_id=None,
        pad_token_id=1,
    )
    return GPT2LMHeadModel(cfg).eval()


def run_vidvlm(dec, case: dict, visual, prompt, beams: int, use_cache: bool) -> list[list[int]]:
    cfg = DecodeConfig("beam" if beams > 1 else "greedy", max_new_tokens=case["new"], num_beams=beams)
    cross = case["m"] > 0

    def recompute(tokens, rows, cache=None):
        if cross:
            return dec(tokens, None if cache is not None and cache.length else visual[rows], cache=cache)[:, -1]
        return dec(tokens, None, cache)[:, -1]

    def then(last, cache):
        return dec(last, None, cache=cache)[:, -1] if cross else dec(last, None, cache)[:, -1]

    step = Cached(dec.new_cache, recompute, then) if use_cache else recompute
    return generate(step, prompt.tolist(), eos_id=-1, pad_id=0, cfg=cfg, device=prompt.device)


def run_hf(model, case: dict, visual, prompt, beams: int) -> torch.Tensor:
    kwargs = {"encoder_hidden_states": visual} if case["m"] > 0 else {}
    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=case["new"],
        min_new_tokens=case["new"],
        do_sample=False,
        num_beams=beams,
        use_cache=True,
        **kwargs,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--device", default="cpu", help="cpu, or cuda (float32 on the GPU)")
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    results = []
    for name in args.cases:
        case = CASES[name]
        torch.manual_seed(0)
        dec, hf = vidvlm_decoder(case).to(dev), hf_decoder(case).to(dev)
        g = torch.Generator().manual_seed(1)
        visual = torch.randn(args.batch, max(case["m"], 1), case["width"], generator=g).to(dev)
        prompt = torch.randint(1, case["vocab"], (args.batch, case["prompt"]), generator=g).to(dev)
        for beams in (1, 4) if case["m"] > 0 else (1,):
            sides = {
                "vidvlm cache": partial(run_vidvlm, dec, case, visual, prompt, beams, True),
                "vidvlm no cache": partial(run_vidvlm, dec, case, visual, prompt, beams, False),
                "hf gpt2": partial(run_hf, hf, case, visual, prompt, beams),
            }
            times: dict[str, list[float]] = {k: [] for k in sides}
            with torch.no_grad():
                for fn in sides.values():  # warm-up
                    fn()
                for _ in range(args.repeats):
                    outs = {}
                    for side, fn in sides.items():
                        sync()
                        t0 = time.perf_counter()
                        outs[side] = fn()
                        sync()
                        times[side].append(time.perf_counter() - t0)
                    assert outs["vidvlm cache"] == outs["vidvlm no cache"], "cached ids differ"
                    assert outs["hf gpt2"].shape[1] == case["prompt"] + case["new"], "HF stopped early"
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            row = {
                "case": name,
                "beams": beams,
                "batch": args.batch,
                **{f"{k} ms": round(v, 1) for k, v in med.items()},
                "cache / hf": round(med["vidvlm cache"] / med["hf gpt2"], 2),
                "cache / no cache": round(med["vidvlm cache"] / med["vidvlm no cache"], 2),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    meta = {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "cpu": cpu_name(),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"}  # fmt: skip
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
