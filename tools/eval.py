"""Evaluate a checkpoint on a manifest: text<->video retrieval, caption-variant accuracy, zero-shot classification
(families that embed video and text), or captioning and question answering per type (families that generate).

    python tools/eval.py --checkpoint runs/contrastive_tiny_8f_shapes/final --manifest data/shapes/val/manifest.jsonl \
        --num-frames 8 --variant-words left right up down [--classes left right up down] [--out metrics.json]
    python tools/eval.py --checkpoint runs/llava_tiny_8f_shapes/final --manifest data/shapes_qa/test/manifest.jsonl \
        [--predictions answers.jsonl]

``--task auto`` (the default) picks generation when the manifest's rows hold questions (``qa``) and the model answers
them (the ``answer`` ability, and trained on questions where the family learns that), else retrieval for a family
that embeds video and text, else generation. Generation
captions every clip (``caption_exact_match``, ``caption_cider``, BLEU, ROUGE-L) and answers every question of a
row's ``qa`` ground truth: ``qa_{type}_accuracy`` per type (exact normalised answer; "when" within 0.5 s), see
``vidvlm.eval.qa``.

The checkpoint is any directory ``vidvlm.load`` opens (``final/`` or a ``checkpoint-*`` of a run). Frames are taken
with a uniform sampler (deterministic, ``model.num_frames`` unless --num-frames) and the model's own evaluation
transform. Prints the metrics as JSON, with the ``environment`` that computed them (``vidvlm.environment``: CPU,
kernels, threads, versions), since greedy decoding and near-tied scores may turn on the last bit.

Retrieval also scores the manifest's hard negatives when its rows carry ``negatives``: ``negatives_acc`` (percent of
clips whose caption outscores every one of its negatives), ``negatives_pair_acc`` (per caption-negative pair) and
``negatives_n``.

``--itm-rerank K`` (a model with the ``match`` ability, e.g. the masking family): also text->video recall with each
caption's top K clips by ITC re-ranked by the model's matching head (``t2v_itm_R@1`` ... beside ``t2v_R@1``).

Evaluation never substitutes one video for another: a row whose file is missing or unreadable is left out, named on
stderr, and counted (``num_missing``, ``missing``); metrics are over the ``num_videos`` readable rows of the
``num_rows`` in the manifest. Exit status: 0; 1 when some rows were left out (the metrics are still printed); 2 for
bad arguments, an unusable checkpoint or manifest, or no readable row at all.
"""

from __future__ import annotations

import argparse
import json
import sys

from vidvlm.atomic import write_text_atomic
from vidvlm.environment import environment
from vidvlm.errors import ConfigError, VidVLMError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a directory vidvlm.load opens")
    parser.add_argument("--manifest", required=True, help="JSONL or CSV manifest")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--variant-words", nargs="*", default=[], help="e.g. left right up down (a caption's last one is swapped)"
    )
    parser.add_argument("--classes", nargs="*", default=[], help="zero-shot class names (manifest labels index them)")
    parser.add_argument("--templates", nargs="*", default=None, help="zero-shot prompt templates with {}")
    parser.add_argument("--itm-rerank", type=int, default=0, metavar="K",
                        help="re-rank each caption's top K clips by the matching head (0: off)")  # fmt: skip
    parser.add_argument("--task", default="auto", choices=["auto", "retrieval", "generation"])
    parser.add_argument("--predictions", default=None, help="generation: write every caption and answer (JSONL)")
    parser.add_argument("--text-corpus", default=None, help="generation: also the LM's loss on this text corpus")
    parser.add_argument("--out", default=None, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        from torch.utils.data import DataLoader

        from vidvlm.data.collate import collate_video_text
        from vidvlm.data.datasets import VideoTextDataset
        from vidvlm.data.sampling import SamplerConfig, build_sampler
        from vidvlm.models.base import EMBED_TEXT, EMBED_VIDEO
        from vidvlm.models.registry import load

        model = load(args.checkpoint).to(args.device).eval()
        if args.num_frames is not None and args.num_frames < 1:
            raise ConfigError(f"--num-frames: must be >= 1, got {args.num_frames}")
        frames = args.num_frames or model.num_frames
        sampler = build_sampler(SamplerConfig(name="uniform", num_frames=frames))
        dataset = VideoTextDataset(args.manifest, sampler, model.transform, train=False, on_error="mark")
        task = args.task
        if task == "auto":
            # a model that answers, asked questions (the rows' qa ground truth), answers them; else rank, else caption
            asked = any(row.extra.get("qa") for row in dataset.rows)
            answers = model.answers_questions()
            embeds = model.can(EMBED_VIDEO) and model.can(EMBED_TEXT)
            task = "generation" if (asked and answers) or not embeds else "retrieval"
        if task == "retrieval":
            model.require(EMBED_VIDEO, "evaluate retrieval")
            model.require(EMBED_TEXT, "evaluate retrieval")
            if args.itm_rerank < 0:
                raise ConfigError(f"--itm-rerank: must be >= 0, got {args.itm_rerank}")
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                            collate_fn=collate_video_text)  # fmt: skip
        kept: list[int] = []
        missing: list[dict] = []

        def readable_batches():
            for batch in loader:
                missing.extend(batch["failed"])
                for f in batch["failed"]:
                    print(f"error: {f['error']}", file=sys.stderr)
                if batch["video"] is not None:
                    kept.extend(batch["index"].tolist())
                    yield batch

        if task == "generation":
            metrics = _generation(args, model, dataset, readable_batches())
        else:
            metrics = _retrieval(args, model, readable_batches(), kept)
        if not kept:
            raise ConfigError(f"{args.manifest}: no row of the manifest could be read")
        metrics = {"num_videos": len(kept), "num_rows": len(dataset), "num_missing": len(missing),
                   "missing": [f["path"] for f in missing], "num_frames": frames, **metrics,
                   "environment": environment(args.device)}  # fmt: skip
    except VidVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    if metrics["num_missing"]:
        print(f"{metrics['num_missing']} of {metrics['num_rows']} row(s) could not be read and were left out",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _retrieval(args, model, batches, kept: list[int]) -> dict:
    import torch

    from vidvlm.eval.rerank import VideoContexts, itm_rerank_metrics
    from vidvlm.eval.retrieval import DEFAULT_TEMPLATES, embed_dataset, zero_shot_accuracy, zero_shot_classifier
    from vidvlm.train.evaluation import embedding_metrics

    with torch.no_grad():
        contexts = VideoContexts(model, batches) if args.itm_rerank else None
        try:
            emb = embed_dataset(model, contexts if contexts is not None else batches)
        except ValueError as e:  # embed_dataset's "empty": every row was left out, which main() reports
            if kept or isinstance(e, VidVLMError):
                raise
            return {}
        metrics = embedding_metrics(model, emb, retrieval=True, variant_words=args.variant_words)
        if contexts is not None:
            flat = [c for per_clip in emb["captions"] for c in per_clip]
            metrics.update(itm_rerank_metrics(model, contexts.gathered(), flat, emb["video"], emb["text"],
                                              emb["text_to_video"], k=args.itm_rerank))  # fmt: skip
        if args.classes:
            classifier = zero_shot_classifier(model, args.classes, args.templates or DEFAULT_TEMPLATES)
            keep = emb["labels"] >= 0
            zs = zero_shot_accuracy(emb["video"][keep], classifier, emb["labels"][keep])
            metrics.update({f"zero_shot_{k}": v for k, v in zs.items()})
    return metrics


def _generation(args, model, dataset, batches) -> dict:
    from vidvlm.eval.qa import generate_answers, generation_metrics

    results = generate_answers(model, batches, dataset.rows, args.batch_size, args.device)
    if not results["captions"]:
        return {}
    if args.predictions:
        rows = [{"kind": "caption", **r} for r in results["captions"]] + [{"kind": "qa", **r} for r in results["qa"]]
        write_text_atomic(args.predictions, "".join(json.dumps(r) + "\n" for r in rows))
    metrics = generation_metrics(results)
    if args.text_corpus:
        from vidvlm.data.text_corpus import TextCorpusDataset
        from vidvlm.models.base import TEXT_ONLY
        from vidvlm.train.evaluation import validation_loss

        model.require(TEXT_ONLY, "score a text corpus")
        text = validation_loss(model, TextCorpusDataset(args.text_corpus), batch_size=args.batch_size)
        metrics["text_loss"] = text["loss"]
    return metrics


if __name__ == "__main__":
    sys.exit(main())
