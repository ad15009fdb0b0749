"""ITM re-ranking of text -> video retrieval: hand cases, a tiny masking model, and ``tools/eval.py --itm-rerank``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from tests.models.test_masking import family
from tests.models.test_registry import CAPTIONS
from vidvlm.data.synthetic import make_synthetic
from vidvlm.errors import ConfigError
from vidvlm.eval.rerank import VideoContexts, itm_rerank_metrics, rerank_ranks
from vidvlm.eval.retrieval import retrieval_ranks
from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel

ROOT = Path(__file__).resolve().parents[2]


def test_rerank_hand_case():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.5], [0.3, 0.2, 0.1]])  # text rows, video columns
    target = torch.tensor([1, 0, 2])
    # ITC ranks: text 0 -> video 1 is 2nd, text 1 -> video 0 is 3rd, text 2 -> video 2 is 3rd
    itm = {(0, 0): -1.0, (0, 1): 2.0, (1, 1): 0.0, (1, 2): 1.0, (2, 0): 5.0, (2, 1): 4.0}
    calls = []

    def scores(ti, vi):
        calls.append(len(ti))
        return torch.tensor([itm[(int(t), int(v))] for t, v in zip(ti, vi, strict=True)])

    ranks = rerank_ranks(sim, target, 2, scores)
    # text 0: ITM puts its video first; text 1 and 2: the right video is outside the top 2 and keeps its ITC rank
    assert ranks.tolist() == [1, 3, 3] and calls == [6]
    itm[(0, 1)] = -5.0  # ITM now agrees with ITC for text 0
    assert rerank_ranks(sim, target, 2, scores).tolist() == [2, 3, 3]
    # k = V re-ranks everything: ranks are the ITM order
    itm.update({(0, 2): 0.0, (1, 0): 3.0, (2, 2): 9.0})
    assert rerank_ranks(sim, target, 3, scores).tolist() == [3, 1, 1]


def test_tiny_model_reranks_by_its_matching_head():
    """The re-ranked ranks are those of ``itm_scores`` computed pair by pair on the raw clips, and at this seed the
    matching head disagrees with ITC (so the re-ranking changes the order)."""
    model = family().eval()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 3, 3, 32, 32, generator=g)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[2, 2] = False
    captions = list(CAPTIONS)
    with torch.no_grad():
        v_emb, t_emb = model.encode_video(video, mask), model.encode_text(captions)
    t2v = torch.arange(4)
    contexts = VideoContexts(
        model, [{"video": video[:2], "frame_mask": mask[:2]}, {"video": video[2:], "frame_mask": mask[2:]}]
    )
    assert len(list(contexts)) == 2
    out = itm_rerank_metrics(model, contexts.gathered(), captions, v_emb, t_emb, t2v, k=4)
    pairs = torch.stack([model.itm_scores(video, mask, [c] * 4) for c in captions])  # [text, video]
    by_itm = (pairs > pairs.diagonal()[:, None]).sum(1) + 1
    by_itc, _ = retrieval_ranks(v_emb, t_emb, t2v)
    assert not torch.equal(pairs.argsort(1), (t_emb @ v_emb.T).argsort(1))  # the two heads disagree
    assert out["t2v_itm_R@1"] == pytest.approx(100.0 * float((by_itm == 1).float().mean()))
    assert out["t2v_R@1"] == pytest.approx(100.0 * float((by_itc == 1).float().mean()))
    assert out["t2v_itm_median_rank"] == float(by_itm.double().median()) and out["itm_k"] == 4.0
    assert out["t2v_itm_R@1"] != out["t2v_R@1"]  # re-ranking changed which clip comes first
    with pytest.raises(ConfigError, match="cannot score video-text pairs .needed to re-rank retrieval"):
        VideoContexts(ContrastiveModel(ContrastiveConfig.tiny()), [])


def test_eval_tool_reports_reranked_recall(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_tool", ROOT / "tools" / "eval.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    manifest = make_synthetic(tmp_path, 5, seed=2, frames=8, size=32, split="val")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    model = family()
    model.prepare_for_training([r["caption"] for r in rows])
    model.save_pretrained(tmp_path / "ckpt")
    args = ["--checkpoint", str(tmp_path / "ckpt"), "--manifest", str(manifest), "--batch-size", "2"]
    assert cli.main([*args, "--itm-rerank", "3"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["itm_k"] == 3.0 and 0 <= metrics["t2v_itm_R@1"] <= 100 and "t2v_R@1" in metrics
    assert cli.main(args) == 0 and "t2v_itm_R@1" not in json.loads(capsys.readouterr().out)
