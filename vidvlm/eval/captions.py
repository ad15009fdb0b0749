"""Caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D over several references per video.

Public as ``vidvlm.eval.caption_metrics``; the module is ``captions`` so that it does not shadow that function.

Our own implementation of the COCO caption evaluation (pycocoevalcap), without its Java tokenizer: sentences are
tokenised by :func:`tokenize` (lower case, punctuation removed, split on white space). On the same tokens the
numbers agree with pycocoevalcap's ``Bleu``, ``Rouge`` and ``Cider`` scorers (tested to 1e-6):

- BLEU is corpus level (clipped n-gram counts summed over the corpus, brevity penalty from the closest reference
  length), with the same tiny smoothing constants as the reference scorer.
- ROUGE-L is the LCS F-measure with beta 1.2, precision and recall each maximised over the references, averaged.
- CIDEr-D uses tf-idf n-gram vectors (n = 1..4) with document frequencies from the references of the evaluated
  corpus, clipped hypothesis weights, a Gaussian length penalty (sigma 6), the mean over references and a factor 10.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from vidvlm.errors import VidVLMError

_PUNCT = re.compile(r"[^\w\s]")


def tokenize(sentence: str) -> list[str]:
    """Lower-case, drop punctuation and split on white space (the tokens every metric here sees)."""
    return _PUNCT.sub(" ", sentence.lower()).split()


def _ngrams(words: Sequence[str], n: int) -> Counter:
    """All 1..n-grams of ``words`` with their counts."""
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def bleu(refs: Sequence[Sequence[list[str]]], hyps: Sequence[list[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n over tokenised hypotheses, each with several tokenised references."""
    tiny, small = 1e-15, 1e-9  # the reference scorer's smoothing: 0 matches give 0, never a division by zero
    correct, guess = [0] * n, [0] * n
    hyp_len, ref_len = 0, 0
    for rs, h in zip(refs, hyps, strict=True):
        max_ref: Counter = Counter()
        for r in rs:
            for g, c in _ngrams(r, n).items():
                max_ref[g] = max(max_ref[g], c)
        for g, c in _ngrams(h, n).items():
            correct[len(g) - 1] += min(max_ref.get(g, 0), c)
        for k in range(n):
            guess[k] += max(0, len(h) - k)
        hyp_len += len(h)
        # closest reference length; ties go to the shorter one, as in the reference scorer
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
    scores, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(prod ** (1.0 / (k + 1)))
    ratio = (hyp_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(refs: Sequence[Sequence[list[str]]], hyps: Sequence[list[str]], beta: float = 1.2) -> list[float]:
    """Per-item ROUGE-L F-measure (precision and recall each maximised over the references)."""
    out = []
    for rs, h in zip(refs, hyps, strict=True):
        h = h or [""]  # an empty hypothesis counts as one empty token, as ``"".split(" ")`` does in the reference
        lcs = [_lcs([*r] or [""], h) for r in rs]
        prec = max(m / len(h) for m in lcs)
        rec = max(m / max(len(r), 1) for m, r in zip(lcs, rs, strict=True))
        out.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0)
    return out


def cider_d(
    refs: Sequence[Sequence[list[str]]], hyps: Sequence[list[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """Per-item CIDEr-D; document frequencies come from the references of this corpus."""
    ref_counts = [[_ngrams(r, n) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rcs in ref_counts:
        df.update({g for rc in rcs for g in rc})
    log_num_docs = math.log(float(len(refs)))

    def vectorise(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        for g, tf in counts.items():
            w = tf * (log_num_docs - math.log(max(1.0, df.get(g, 0.0))))
            vec[len(g) - 1][g] = w
            norm[len(g) - 1] += w * w
        # the reference scorer measures length as the number of bigrams; kept so that scores agree exactly
        length = sum(tf for g, tf in counts.items() if len(g) == 2)
        return vec, [math.sqrt(x) for x in norm], length

    scores = []
    for rcs, h in zip(ref_counts, hyps, strict=True):
        vh, nh, lh = vectorise(_ngrams(h, n))
        total = [0.0] * n
        for rc in rcs:
            vr, nr, lr = vectorise(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma**2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * sum(total) / n / len(rcs))
    return scores


def caption_metrics(references: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """Score predicted captions against references.

    Args:
        references: video id -> one or more reference captions.
        predictions: video id -> the predicted caption; the ids must equal those of ``references``.

    Returns:
        ``bleu_1``..``bleu_4``, ``rouge_l``, ``cider`` (CIDEr-D, x10 scale as in the COCO evaluation) and ``num``.

    Raises:
        VidVLMError: if the ids differ or a video has no reference.
    """
    if set(references) != set(predictions):
        missing = sorted(set(references) ^ set(predictions))[:5]
        raise VidVLMError(f"caption_metrics: references and predictions cover different ids (e.g. {missing})")
    if not references:
        raise VidVLMError("caption_metrics: no predictions to score")
    ids = sorted(references)
    refs, hyps = [], []
    for i in ids:
        rs = references[i]
        if isinstance(rs, str) or not rs:
            raise VidVLMError(f"caption_metrics: references[{i!r}] must be a non-empty list of captions")
        refs.append([tokenize(r) for r in rs])
        hyps.append(tokenize(predictions[i]))
    out = {f"bleu_{k + 1}": s for k, s in enumerate(bleu(refs, hyps))}
    rl = rouge_l(refs, hyps)
    out["rouge_l"] = sum(rl) / len(rl)
    cd = cider_d(refs, hyps)
    out["cider"] = sum(cd) / len(cd)
    out["num"] = float(len(ids))
    return out


__all__ = ["caption_metrics", "tokenize", "bleu", "rouge_l", "cider_d"]
