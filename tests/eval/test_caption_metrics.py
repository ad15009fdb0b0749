"""Caption metrics agree with pycocoevalcap's scorers on the same tokens; VQA accuracy normalises answers."""

from __future__ import annotations

import random

import pytest

from vidvlm.errors import VidVLMError
from vidvlm.eval.captions import caption_metrics, tokenize
from vidvlm.eval.vqa import normalize_answer, vqa_accuracy

WORDS = "a red blue green circle square triangle moves left right up down slowly quickly the small big"
WORDS = WORDS.split()


def _corpus(seed: int, num: int = 12) -> tuple[dict[str, list[str]], dict[str, str]]:
    rng = random.Random(seed)
    sent = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 9)))
    refs = {f"v{i}": [sent() for _ in range(rng.randint(1, 5))] for i in range(num)}
    preds = {k: (rng.choice(v) if rng.random() < 0.3 else sent()) for k, v in refs.items()}
    return refs, preds


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parity_with_pycocoevalcap(seed):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, preds = _corpus(seed)
    refs["punct"], preds["punct"] = ["A Red, circle!", "the circle moves"], "a red circle."
    gts = {k: [" ".join(tokenize(r)) for r in v] for k, v in refs.items()}
    res = {k: [" ".join(tokenize(p))] for k, p in preds.items()}
    ours = caption_metrics(refs, preds)
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    r, _ = Rouge().compute_score(gts, res)
    c, _ = Cider().compute_score(gts, res)
    for k in range(4):
        assert ours[f"bleu_{k + 1}"] == pytest.approx(b[k], abs=1e-6)
    assert ours["rouge_l"] == pytest.approx(r, abs=1e-6)
    assert ours["cider"] == pytest.approx(c, abs=1e-6)
    assert ours["num"] == len(refs)


def test_perfect_and_wrong_predictions():
    refs = {"a": ["a red circle moves left"], "b": ["a blue square moves up"], "c": ["a green triangle moves down"]}
    perfect = caption_metrics(refs, {k: v[0] for k, v in refs.items()})
    assert perfect["bleu_4"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    wrong = caption_metrics(refs, {"a": "a blue square moves up", "b": "a red circle moves left", "c": "nothing"})
    assert wrong["cider"] < perfect["cider"] and wrong["rouge_l"] < 1.0


def test_bad_inputs():
    with pytest.raises(VidVLMError, match="different ids"):
        caption_metrics({"a": ["x"]}, {"b": "x"})
    with pytest.raises(VidVLMError, match="non-empty list"):
        caption_metrics({"a": []}, {"a": "x"})


def test_vqa_accuracy():
    assert normalize_answer("The Two  circles!") == "2 circles"
    refs = {"q1": "left", "q2": ["a circle", "circle", "square"], "q3": "up"}
    preds = {"q1": "Left.", "q2": "the circle", "q3": "down"}
    assert vqa_accuracy(refs, preds)["accuracy"] == pytest.approx(2 / 3)
    assert vqa_accuracy(refs, preds, soft=True)["accuracy"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    with pytest.raises(VidVLMError):
        vqa_accuracy(refs, {"q1": "x"})


def test_public_names_stay_functions():
    import vidvlm.eval

    for _ in range(2):  # a submodule of the same name would replace the function after the first access
        assert callable(vidvlm.eval.caption_metrics) and callable(vidvlm.eval.vqa_accuracy)
