"""evaluate() needs a model and data, not a Trainer; retrieval follows the model's declared abilities."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from train_tiny import TinyDataset, TinyModel, collate

from vidvlm.models.base import EMBED_TEXT, EMBED_VIDEO, VLMModel
from vidvlm.train.evaluation import evaluate

TRAIN = Path(__file__).resolve().parents[2] / "vidvlm" / "train"


class Captioned(TinyDataset):
    """TinyDataset samples with the keys of the data layer (captions name the label)."""

    def __getitem__(self, i: int) -> dict:
        s = super().__getitem__(i)
        s.update(captions=[f"class {s['label']}"], text=f"class {s['label']}", path=f"{i}.mp4", timestamps=[0.0])
        return s


class Embedder(VLMModel):
    """Embeds a clip as the one-hot of its nearest dataset row's label, a caption as the one-hot of its class."""

    abilities = frozenset({EMBED_VIDEO, EMBED_TEXT})

    def __init__(self, data: TinyDataset) -> None:
        super().__init__(SimpleNamespace(family="toy"))
        self.tiny = TinyModel()
        self.register_buffer("base", data.base.clone())
        self.register_buffer("labels", data.labels.clone())
        self.grad_modes: set[bool] = set()  # whether autograd was on in each call

    def forward(self, batch: dict) -> dict:
        self.grad_modes.add(torch.is_grad_enabled())
        return {k: v for k, v in self.tiny(batch).items() if k.endswith("_loss")}

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.grad_modes.add(torch.is_grad_enabled())
        nearest = torch.cdist(video[:, 0].flatten(1), self.base).argmin(1)
        return torch.nn.functional.one_hot(self.labels[nearest], 4).float()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([int(t.split()[-1]) for t in texts]), 4).float()


class NoAbilities(Embedder):
    """Has the methods and a "contrastive" family name, but declares nothing: it is not asked to embed."""

    abilities = frozenset()

    def __init__(self, data: TinyDataset) -> None:
        super().__init__(data)
        self.config = SimpleNamespace(family="contrastive")


def test_validation_loss_of_a_plain_module():
    torch.manual_seed(0)
    model, data = TinyModel(), Captioned(10)
    metrics = evaluate(model, data, batch_size=4, collate_fn=collate)
    assert set(metrics) == {"ce_loss", "aux_loss", "loss"}
    model.eval()
    with torch.no_grad():
        out = model(collate([data[i] for i in range(10)]))
    assert metrics["ce_loss"] == pytest.approx(float(out["ce_loss"]), rel=1e-5)
    assert metrics["loss"] == pytest.approx(float(out["ce_loss"] + out["aux_loss"]), rel=1e-5)
    first = evaluate(model, data, batch_size=4, collate_fn=collate, max_batches=1)
    with torch.no_grad():
        out = model(collate([data[i] for i in range(4)]))
    assert first["ce_loss"] == pytest.approx(float(out["ce_loss"]), rel=1e-5)


def test_retrieval_follows_declared_abilities():
    data = Captioned(12)
    metrics = evaluate(Embedder(data), data, batch_size=4, variant_words=["0", "1", "2", "3"])
    assert metrics["t2v_caption_R@1"] == 100.0 and metrics["variant_acc"] == 100.0 and "loss" in metrics
    assert 0.0 <= metrics["t2v_R@1"] <= 100.0
    plain = evaluate(NoAbilities(data), data, batch_size=4)
    assert "t2v_R@1" not in plain and "loss" in plain
    off = evaluate(Embedder(data), data, batch_size=4, retrieval=False)
    assert "t2v_R@1" not in off


class Counted(Captioned):
    """Captioned samples that count how often each is read (a read is a decode in the real data layer)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.reads: Counter[int] = Counter()

    def __getitem__(self, i: int) -> dict:
        self.reads[i] += 1
        return super().__getitem__(i)


def test_evaluation_reads_each_sample_once():
    """Loss, retrieval and caption recall come from one pass: every clip is decoded once, not once per metric."""
    data = Counted(10)
    model = Embedder(data)
    metrics = evaluate(model, data, batch_size=4, variant_words=["0", "1", "2", "3"])
    assert {"loss", "t2v_R@1", "t2v_caption_R@1", "variant_acc"} <= set(metrics)
    assert data.reads == Counter(range(10))
    assert model.grad_modes == {False}  # no autograd graph is built while evaluating
    limited = Counted(10)
    evaluate(Embedder(limited), limited, batch_size=4, max_batches=1)
    assert limited.reads == Counter(range(4))


def test_one_pass_metrics_equal_the_separate_passes():
    """The one-pass evaluation gives what a separate loss pass and ``embed_dataset`` give."""
    from eval_ranks import Numbered, OneHot
    from eval_ranks import collate as collate_numbered

    from vidvlm.eval.retrieval import embed_dataset, retrieval_metrics
    from vidvlm.train.evaluation import caption_recall, validation_loss

    class Confused(OneHot):
        """Clip 4 embeds as twice clip 5's one-hot: caption ``clip 5`` finds clip 4 first."""

        def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
            emb = super().encode_video(video, frame_mask)
            four = video[:, 0, 0, 0, 0] == 4
            emb[four] = 2 * torch.nn.functional.one_hot(torch.tensor(5), self.n).float()
            return emb

    model, data = Confused(9), Numbered(9)
    metrics = evaluate(model, data, batch_size=2, collate_fn=collate_numbered)
    emb = embed_dataset(model, torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate_numbered))
    expected = {
        **validation_loss(model, data, batch_size=2, collate_fn=collate_numbered),
        **retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"]),
        **caption_recall(emb["video"], emb["text"], [data[i]["captions"] for i in range(9)]),
    }
    assert metrics == pytest.approx(expected)
    assert metrics["t2v_R@1"] < 100.0


def test_trainer_and_evaluation_do_not_import_each_other():
    def imports(name: str) -> set[str]:
        tree = ast.parse((TRAIN / name).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return found

    assert "vidvlm.train.trainer" not in imports("evaluation.py")
    source = (TRAIN / "evaluation.py").read_text() + (TRAIN / "trainer.py").read_text()
    assert "family ==" not in source and 'prepare_for_training")' not in source  # abilities, not guesses


def test_generation_is_refused_by_name_without_a_generating_model_or_manifest_rows():
    from eval_ranks import Numbered, OneHot, collate

    from vidvlm.errors import ConfigError

    data = Captioned(4)
    with pytest.raises(ConfigError, match=r"eval\.generation: family 'Embedder' cannot generate text"):
        evaluate(Embedder(data), data, batch_size=2, collate_fn=collate, generation=True)
    with pytest.raises(ConfigError, match=r"eval\.generation: the validation dataset \(Captioned\) has no manifest"):
        evaluate(OneHot(4), data, batch_size=2, collate_fn=collate, generation=True)
    # with rows, questions are asked only of a model that answers them
    model = OneHot(4)
    model.answers_questions = lambda: False
    metrics = evaluate(model, Numbered(4), batch_size=3, collate_fn=collate, generation=True)
    assert metrics["caption_exact_match"] == 1.0 and not any(k.startswith("qa_") for k in metrics)


def test_negative_accuracy_counts_clips_and_pairs_the_caption_wins():
    """Worked by hand: clip 0's caption beats both negatives, clip 1's loses to one of two (a tie counts as a loss
    too), clip 2 has none and is left out: 1 of 2 clips, 3 of 4 pairs."""
    from vidvlm.train.evaluation import negative_accuracy

    vectors = {"a": [1.0, 0.0], "a1": [0.6, 0.8], "a2": [0.0, 1.0], "b": [0.0, 1.0], "b1": [0.0, 1.0], "b2": [1.0, 0.0]}
    model = SimpleNamespace(encode_text=lambda texts: torch.tensor([vectors[t] for t in texts]))
    video = torch.tensor([[2.0, 0.0], [0.1, 1.0], [1.0, 1.0]])
    out = negative_accuracy(model, video, ["a", "b", "a"], [["a1", "a2"], ["b1", "b2"], []], batch_size=3)
    assert out == {"negatives_acc": 50.0, "negatives_pair_acc": 75.0, "negatives_n": 2.0}
    assert negative_accuracy(model, video, ["a", "b", "a"], [[], [], []]) == {}
