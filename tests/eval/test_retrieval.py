"""Retrieval and zero-shot metrics: hand-computed small cases and a brute-force sort-based reference."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn.functional as F

from vidvlm.eval.retrieval import (
    embed_dataset,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_accuracy,
    zero_shot_classifier,
)


def test_hand_computed_case():
    # 3 videos along the axes; captions: t0 -> v0 (ranked 1st), t1 -> v1 (v0 scores higher: rank 2),
    # t2 -> v2 (v0 and v1 both beat it: rank 3), t3 -> v2 (rank 1)
    video = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0.9, 0.5, 0], [0.8, 0.6, 0.1], [0, 0, 1.0]])
    t2v = torch.tensor([0, 1, 2, 2])
    t2v_ranks, v2t_ranks = retrieval_ranks(video, text, t2v)
    assert t2v_ranks.tolist() == [1, 2, 3, 1]
    # v0 scores texts [1, .9, .8, 0]: its caption t0 is first. v1 scores [0, .5, .6, 0]: t2 beats t1 -> rank 2.
    # v2 scores [0, 0, .1, 1]: best caption t3 is first.
    assert v2t_ranks.tolist() == [1, 2, 1]
    m = retrieval_metrics(video, text, t2v, ks=(1, 2))
    assert m["t2v_R@1"] == pytest.approx(50.0)
    assert m["t2v_R@2"] == pytest.approx(75.0)
    assert m["t2v_mean_rank"] == pytest.approx(7 / 4)
    assert m["t2v_median_rank"] == pytest.approx(1.0)  # lower median of [1, 1, 2, 3]
    assert m["v2t_R@1"] == pytest.approx(200 / 3)
    assert m["v2t_R@2"] == pytest.approx(100.0)
    assert m["v2t_median_rank"] == 1.0


def _brute_force(video, text, t2v):
    """Sort every row and find the position of the (best) correct item; ties broken in the model's favour."""
    sim = (text @ video.T).tolist()
    t2v_ranks = []
    for j, row in enumerate(sim):
        target = row[t2v[j]]
        ordered = sorted(row, reverse=True)
        t2v_ranks.append(ordered.index(target) + 1)
    v2t_ranks = []
    cols = list(zip(*sim, strict=True))
    for i, col in enumerate(cols):
        ordered = sorted(col, reverse=True)
        v2t_ranks.append(min(ordered.index(col[j]) + 1 for j in range(len(col)) if t2v[j] == i))
    return t2v_ranks, v2t_ranks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    video = F.normalize(torch.randn(12, 6, generator=g, dtype=torch.float64), dim=-1)
    t2v = torch.cat([torch.arange(12), torch.randint(0, 12, (9,), generator=g)])
    text = F.normalize(video[t2v] + 0.8 * torch.randn(len(t2v), 6, generator=g, dtype=torch.float64), dim=-1)
    ref_t2v, ref_v2t = _brute_force(video, text, t2v.tolist())
    got_t2v, got_v2t = retrieval_ranks(video, text, t2v)
    assert got_t2v.tolist() == ref_t2v
    assert got_v2t.tolist() == ref_v2t
    m = retrieval_metrics(video, text, t2v)
    for k in (1, 5, 10):
        assert m[f"t2v_R@{k}"] == pytest.approx(100 * sum(r <= k for r in ref_t2v) / len(ref_t2v))
        assert m[f"v2t_R@{k}"] == pytest.approx(100 * sum(r <= k for r in ref_v2t) / len(ref_v2t))
    assert m["t2v_mean_rank"] == pytest.approx(statistics.mean(ref_t2v))
    assert m["v2t_median_rank"] == pytest.approx(statistics.median_low(ref_v2t))


def test_perfect_and_errors():
    x = F.normalize(torch.randn(5, 4), dim=-1)
    m = retrieval_metrics(x, x)
    assert m["t2v_R@1"] == 100.0 and m["v2t_R@1"] == 100.0 and m["t2v_mean_rank"] == 1.0
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_ranks(x, x[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs text_to_video"):
        retrieval_metrics(x, x[:3])


def test_zero_shot_accuracy_hand_case():
    classifier = torch.eye(3)
    video = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.3], [0.0, 0.1, 1.0]])
    labels = torch.tensor([0, 0, 2, 2])  # correct, 2nd, 3rd, correct
    acc = zero_shot_accuracy(video, classifier, labels, ks=(1, 2, 5))
    assert acc == {"top1": pytest.approx(50.0), "top2": pytest.approx(75.0), "top5": pytest.approx(100.0)}
    with pytest.raises(ValueError, match="labels"):
        zero_shot_accuracy(video, classifier, torch.tensor([0, 1, 2, 3]))


class _BagOfWords(torch.nn.Module):
    """A stand-in embedding model whose text vector counts known words; video embedding = per-clip channel means."""

    words = ("red", "green", "blue")

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode_text(self, texts):
        rows = [[float(w in s.split()) + 1e-3 for w in self.words] for s in texts]
        return F.normalize(torch.tensor(rows), dim=-1)

    def encode_video(self, video, frame_mask=None):
        return F.normalize(video.mean(dim=(1, 3, 4)), dim=-1)


def test_zero_shot_classifier_and_embed_dataset():
    model = _BagOfWords()
    clf = zero_shot_classifier(model, ["red", "green", "blue"], ["a {} video", "{} things"])
    assert clf.shape == (3, 3)
    assert clf.argmax(1).tolist() == [0, 1, 2]
    # two collated batches: a red clip (2 captions), a blue clip (1 caption), then a green clip
    video = torch.zeros(3, 2, 3, 4, 4)
    for i, c in enumerate([0, 2, 1]):
        video[i, :, c] = 1.0
    batches = [
        {"video": video[:2], "captions": [["red", "a red thing"], ["blue"]], "text": ["red", "blue"],
         "label": torch.tensor([0, 2])},
        {"video": video[2:], "captions": [["green"]], "text": ["green"], "label": torch.tensor([1])},
    ]  # fmt: skip
    emb = embed_dataset(model, batches)
    assert emb["video"].shape == (3, 3) and emb["text"].shape == (4, 3)
    assert emb["text_to_video"].tolist() == [0, 0, 1, 2]
    assert emb["labels"].tolist() == [0, 2, 1]
    m = retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"])
    assert m["t2v_R@1"] == 100.0 and m["v2t_R@1"] == 100.0
    assert zero_shot_accuracy(emb["video"], clf, emb["labels"])["top1"] == 100.0
