"""Contrastive losses against naive per-pair references, and the distributed gather-with-grad path on 2 gloo ranks."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vidvlm.errors import ConfigError
from vidvlm.losses import clip_loss, get_loss, siglip_loss


def _emb(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def naive_clip(v: torch.Tensor, t: torch.Tensor, scale: float, t2v: list[int]) -> float:
    """Loop-by-loop multi-positive InfoNCE: mean over each video's captions of -log p(caption | video), and
    -log p(video | caption), each direction averaged over its queries, then the two averaged."""
    vv, tt = v.tolist(), t.tolist()

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    v2t = []
    for i, vi in enumerate(vv):
        logits = [scale * dot(vi, tj) for tj in tt]
        lse = math.log(sum(math.exp(z) for z in logits))
        pos = [j for j, g in enumerate(t2v) if g == i]
        v2t.append(sum(lse - logits[j] for j in pos) / len(pos))
    t2v_l = []
    for j, tj in enumerate(tt):
        if t2v[j] < 0:  # a hard negative text: a column of every video's softmax, no row of its own
            continue
        logits = [scale * dot(vi, tj) for vi in vv]
        lse = math.log(sum(math.exp(z) for z in logits))
        t2v_l.append(lse - logits[t2v[j]])
    return (sum(v2t) / len(v2t) + sum(t2v_l) / len(t2v_l)) / 2


def naive_siglip(v: torch.Tensor, t: torch.Tensor, scale: float, bias: float, t2v: list[int]) -> float:
    total = 0.0
    for i, vi in enumerate(v.tolist()):
        for j, tj in enumerate(t.tolist()):
            z = 1.0 if t2v[j] == i else -1.0
            logit = scale * sum(a * b for a, b in zip(vi, tj, strict=True)) + bias
            total += math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
    return total / v.shape[0]


@pytest.mark.parametrize("t2v", [[0, 1, 2, 3], [0, 0, 1, 2, 2, 2, 3], [3, 2, 1, 0, 0], [0, -1, 1, 2, -1, 3, -1]])
def test_clip_matches_naive(t2v):
    v, t = _emb(4, 8, 0), _emb(len(t2v), 8, 1)
    got = clip_loss(v, t, torch.tensor(7.5, dtype=torch.float64), torch.tensor(t2v))
    assert got.item() == pytest.approx(naive_clip(v, t, 7.5, t2v), rel=1e-10)


def test_clip_one_caption_is_symmetric_cross_entropy():
    v, t = _emb(5, 8, 2), _emb(5, 8, 3)
    logits = 3.0 * v @ t.T
    ref = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert clip_loss(v, t, torch.tensor(3.0, dtype=torch.float64)).item() == pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize("t2v", [[0, 1, 2], [0, 0, 1, 2, 2], [0, -1, 1, 2, -1]])
def test_siglip_matches_naive(t2v):
    v, t = _emb(3, 8, 4), _emb(len(t2v), 8, 5)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    got = siglip_loss(v, t, scale, bias, torch.tensor(t2v))
    assert got.item() == pytest.approx(naive_siglip(v, t, 10.0, -10.0, t2v), rel=1e-10)


def test_loss_input_errors():
    v = _emb(3, 8, 0)
    with pytest.raises(ValueError, match="text_to_video"):
        clip_loss(v, _emb(4, 8, 1), torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least one caption"):
        clip_loss(v, _emb(3, 8, 1), torch.tensor(1.0), torch.tensor([0, 0, 1]))
    with pytest.raises(ConfigError, match="unknown loss"):
        get_loss("triplet")
    assert get_loss("siglip") is siglip_loss
    with pytest.raises(ValueError, match="or be -1"):
        clip_loss(v, _emb(4, 8, 1), torch.tensor(1.0), torch.tensor([0, 1, 2, -2]))


def test_hard_negative_columns_only_enter_video_to_text():
    """A -1 text leaves text -> video as it was and adds a column to each video's softmax: a negative close to a
    video's caption raises the loss, one far from every video hardly changes it."""
    v, t = _emb(3, 8, 6), _emb(3, 8, 7)
    scale = torch.tensor(10.0, dtype=torch.float64)
    base = clip_loss(v, t, scale)
    near = F.normalize(t[1:2] + 0.05 * _emb(1, 8, 8), dim=-1)  # almost video 1's caption
    with_near = clip_loss(v, torch.cat([t, near]), scale, torch.tensor([0, 1, 2, -1]))
    logits = scale * v @ torch.cat([t, near]).T
    v2t = F.cross_entropy(logits, torch.arange(3))
    t2v = F.cross_entropy(scale * t @ v.T, torch.arange(3))  # the three captions' rows, unchanged
    assert with_near.item() == pytest.approx(((v2t + t2v) / 2).item(), rel=1e-12)
    assert with_near > base + 0.1


# ---------------------------------------------------------------------------------------------- distributed (gloo)
WORLD = 2
NV, K, D = 4, 2, 8  # 4 videos in all, 2 captions per video


def _full_batch():
    v = _emb(NV, D, 10).float()
    t = _emb(NV * K, D, 11).float()
    t2v = torch.arange(NV).repeat_interleave(K)
    return v, t, t2v


def _loss(name, v, t, scale, t2v, local):
    if name == "clip":
        return clip_loss(v, t, scale, t2v, local_loss=local)
    return siglip_loss(v, t, scale, torch.tensor(-1.0), t2v, local_loss=local)


SPLITS = {"even": [2, 2], "ragged": [3, 1]}  # videos per rank
NEGATIVES = _emb(WORLD, D, 12).float()  # with "neg": one hard negative text per rank, after its captions


def _slices(split: str, rank: int) -> tuple[slice, slice]:
    counts = SPLITS[split]
    start = sum(counts[:rank])
    return slice(start, start + counts[rank]), slice(start * K, (start + counts[rank]) * K)


def _rank_batch(split: str, rank: int, neg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rank's videos, texts and their local video indices (-1 for its hard negative)."""
    v, t, t2v = _full_batch()
    vs, ts = _slices(split, rank)
    texts, index = t[ts], t2v[ts] - vs.start
    if neg:
        texts, index = torch.cat([texts, NEGATIVES[rank : rank + 1]]), torch.cat([index, torch.tensor([-1])])
    return v[vs], texts, index


def _global_batch(split: str, neg: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ranks' batches concatenated in rank order, as one process would hold them."""
    parts = [_rank_batch(split, r, neg) for r in range(WORLD)]
    offsets = [sum(SPLITS[split][:r]) for r in range(WORLD)]
    t2v = [torch.where(i >= 0, i + o, -1) for (_, _, i), o in zip(parts, offsets, strict=True)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat(t2v)


def _worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist
    from safetensors.torch import save_file

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        result = {}
        for split, neg, name, local in itertools.product(SPLITS, (False, True), ("clip", "siglip"), (False, True)):
            v, t, t2v = _rank_batch(split, rank, neg)
            lv, lt = v.clone().requires_grad_(True), t.clone().requires_grad_(True)
            scale = torch.tensor(5.0, requires_grad=True)
            loss = _loss(name, lv, lt, scale, t2v, local)
            loss.backward()
            key = f"{split}_{int(neg)}_{name}_{int(local)}"
            result.update({f"{key}_loss": loss.detach().reshape(1), f"{key}_gv": lv.grad, f"{key}_gt": lt.grad})
            result[f"{key}_gs"] = scale.grad.reshape(1)
        save_file(result, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_gather_with_grad_equals_single_process(tmp_path):
    """Two gloo ranks holding parts of the batch (even, and ragged 3 + 1 videos) reproduce the single-process loss on
    the whole batch, with and without a hard negative text on each rank; the gradient a rank gets for its features
    is WORLD x the full-batch gradient (DDP's average over ranks divides that out), and the DDP-averaged logit-scale
    gradient equals the full-batch one. The local-loss variant is checked on even splits, where the mean of the
    ranks' losses is the global loss."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD)]
    for split, neg, name in itertools.product(SPLITS, (False, True), ("clip", "siglip")):
        v, t, t2v = _global_batch(split, neg)
        fv, ft = v.clone().requires_grad_(True), t.clone().requires_grad_(True)
        scale = torch.tensor(5.0, requires_grad=True)
        full = _loss(name, fv, ft, scale, t2v, False)
        full.backward()
        for local in (False, True):
            key = f"{split}_{int(neg)}_{name}_{int(local)}"
            losses = torch.cat([r[f"{key}_loss"] for r in ranks])
            gv = torch.cat([r[f"{key}_gv"] for r in ranks])
            gt = torch.cat([r[f"{key}_gt"] for r in ranks])
            gs = torch.cat([r[f"{key}_gs"] for r in ranks]).mean()
            if local and split == "ragged":
                assert torch.isfinite(losses).all() and gv.shape == fv.shape
                continue
            if local:  # each rank scores its own rows: their mean is the global loss
                torch.testing.assert_close(losses.mean(), full.detach(), rtol=1e-5, atol=1e-6)
            else:  # every rank computes the whole global loss
                torch.testing.assert_close(losses, full.detach().expand(WORLD), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(gv, WORLD * fv.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gt, WORLD * ft.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(gs, scale.grad, rtol=1e-4, atol=1e-6)


class _ReadBacks(TorchDispatchMode):
    """Counts reads of a tensor's value into Python (``.item()``, ``bool(t)``): each one stalls the host on a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_diagonal_pairs_read_nothing_back(loss):
    v, t = _emb(4, 8, 0), _emb(4, 8, 1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    args = (scale,) if loss == "clip" else (scale, bias)
    with _ReadBacks() as reads:
        get_loss(loss)(v, t, *args)
    assert reads.count == 0
    with _ReadBacks() as reads:  # given pairs are checked once per condition, on the tensor as given (the CPU here)
        get_loss(loss)(v, t, *args, torch.tensor([0, 1, 2, 3]))
    assert reads.count == 2
