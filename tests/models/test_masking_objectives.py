"""The masking family's multimodal objectives: box prediction (X-FM), masked multimodal modelling (FLAVA) and
text-guided masked video modelling (X-FM)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.test_masking import _Stub, family
from tests.models.test_registry import make_batch
from vidvlm.errors import ConfigError
from vidvlm.layers.masking import make_keep, visible_mask
from vidvlm.losses import box_loss, giou_loss
from vidvlm.models.frontend import TowerConfig
from vidvlm.models.masking import MaskingConfig, MaskingModel, XFMConfig

OFF = dict(itc_weight=0.0, itm_weight=0.0, mlm_weight=0.0, video_mlm_weight=0.0)


def test_giou_matches_torchvision():
    """Values and gradients of ``giou_loss`` are torchvision's (overlapping, touching, disjoint, nested boxes)."""
    from torchvision.ops import generalized_box_iou_loss

    g = torch.Generator().manual_seed(0)
    lo = torch.rand(64, 2, generator=g)
    a = torch.cat([lo, lo + torch.rand(64, 2, generator=g) * 0.5], 1)
    b = torch.cat([lo + torch.randn(64, 2, generator=g) * 0.3, lo + torch.rand(64, 2, generator=g)], 1)
    b[:4] = a[:4]  # identical
    b[4, 0] = a[4, 2]  # touching on one side
    b[5] = torch.tensor([5.0, 5.0, 6.0, 6.0])  # far apart
    ours_a, ours_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    ref_a, ref_b = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours, ref = giou_loss(ours_a, ours_b), generalized_box_iou_loss(ref_a, ref_b, reduction="none")
    torch.testing.assert_close(ours, ref)
    weights = torch.rand(64, generator=g)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours_a.grad, ref_a.grad)
    torch.testing.assert_close(ours_b.grad, ref_b.grad)


def test_box_loss_hand_case():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]])
    target = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2], [float("nan")] * 4])
    l1, giou = box_loss(pred, target)
    # row 0: |0.1| over 4 coordinates; overlap 0.1 x 0.2 of a 0.06 union, enclosure 0.3 x 0.2 = the union: 1 - 1/3
    # row 1: |0.6| + |0.6| over 4; disjoint, union 0.08, enclosure 0.8 x 0.8: GIoU = -(0.64 - 0.08) / 0.64
    # row 2 has no box
    assert l1.item() == pytest.approx((0.025 + 0.3) / 2)
    assert giou.item() == pytest.approx((2 / 3 + 1.875) / 2, rel=1e-5)
    l1, giou = box_loss(pred, target, valid=torch.tensor([True, False, True]))
    assert (l1.item(), giou.item()) == pytest.approx((0.025, 2 / 3), rel=1e-5)
    none = box_loss(pred.requires_grad_(), target, valid=torch.zeros(3, dtype=torch.bool))
    assert none[0].item() == 0.0 and none[0].requires_grad


def _boxes(b: int, t: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    centre, size = torch.rand(b, t, 2, generator=g) * 0.5 + 0.25, torch.rand(b, t, 2, generator=g) * 0.3 + 0.1
    return torch.cat([centre, size], dim=-1)


def test_bbox_loss_scores_the_middle_real_frame():
    model = family(XFMConfig, bbox_weight=2.0, **OFF).eval()
    batch = make_batch(model, num_frames=4)  # clip 0: 4 real frames (middle 2), clip 1: 3 real (middle 1)
    batch["boxes"] = _boxes(2, 4)
    preds = []
    model.box_head.register_forward_hook(lambda m, a, o: preds.append(o))
    with torch.no_grad():
        out = model(batch)
    assert set(k for k in out if k.endswith("_loss")) == {"bbox_loss"}
    target = batch["boxes"][torch.tensor([0, 1]), torch.tensor([2, 1])]
    torch.testing.assert_close(out["bbox_loss"], 2.0 * sum(box_loss(preds[0], target)))
    batch["boxes"][0, 2] = float("nan")  # the scored frame of clip 0 has no box: only clip 1 counts
    batch["boxes"][1, 0] = float("nan")  # another frame's box is never read
    with torch.no_grad():
        only = model(batch)["bbox_loss"]
    torch.testing.assert_close(only, 2.0 * sum(box_loss(preds[1][1:], target[1:])))
    del batch["boxes"]
    with pytest.raises(ConfigError, match="^bbox_weight: the batch has no 'boxes'"):
        model(batch)


def test_bbox_trains_the_fusion_and_box_head():
    model = family(MaskingConfig, bbox_weight=1.0, **OFF).train()
    batch = make_batch(model, num_frames=2)
    batch["boxes"] = _boxes(2, 2)
    model(batch)["bbox_loss"].backward()
    assert model.box_head.fc1.weight.grad.abs().sum() > 0
    assert model.fusion.blocks[0].cross_attn.kv.weight.grad.abs().sum() > 0
    assert model.front_end.base_tower.patch_embed.proj.weight.grad.abs().sum() > 0


def _hidden_pixels(keep: torch.Tensor, t: int) -> torch.Tensor:
    """``[2, t, 3, 32, 32]`` ones on the hidden tube positions of ``keep`` (8-pixel patches on a 4 x 4 grid)."""
    hidden = ~visible_mask(keep, 16)[:, 0]
    return hidden.view(2, 1, 1, 4, 1, 4, 1).expand(2, t, 3, 4, 8, 4, 8).reshape(2, t, 3, 32, 32).float()


@pytest.mark.parametrize("num_frames", [4, 1])
def test_mmm_encodes_the_visible_tokens_and_reads_no_hidden_pixel(num_frames):
    model = family(MaskingConfig, mmm_weight=1.0, mmm_video_ratio=0.4, **OFF).eval()
    batch = make_batch(model, num_frames=num_frames)
    seen = []
    model.front_end.base_tower.register_forward_hook(lambda m, a, o: seen.append(o.last_hidden_state.shape[2]))
    ids, amask = model.tokenize(batch["text"])

    def loss(video: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(7)
        with torch.no_grad():
            return model.mmm_loss(video, batch["frame_mask"], ids, amask)

    first = loss(batch["video"])
    assert seen == [1 + 10] and torch.isfinite(first) and first > 0  # 16 - round(0.4 * 16) visible per step
    torch.manual_seed(7)
    keep = make_keep(2, num_frames, 16, 0.4, "tube")  # the draw mmm_loss makes first
    hidden = _hidden_pixels(keep, num_frames)
    assert loss(batch["video"] + 5.0 * hidden).item() == first.item()
    assert loss(batch["video"] + 5.0 * (1 - hidden)).item() != first.item()


def test_mmm_and_tmim_respect_stop_gradient():
    for cls, reaches in ((MaskingConfig, True), (XFMConfig, False)):
        for objective in ("mmm", "tmim"):
            model = family(cls, **{f"{objective}_weight": 1.0}, **OFF).train()
            model(make_batch(model))[f"{objective}_loss"].backward()
            grads = [p.grad for p in model.text.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
            assert bool(grads) is reaches, (cls.__name__, objective)
            assert model.front_end.base_tower.patch_embed.proj.weight.grad.abs().sum() > 0


def test_tmim_prediction_reads_the_caption_but_no_hidden_pixel():
    model = family(MaskingConfig, tmim_weight=1.0, tmim_ratio=0.75, **OFF).eval()
    batch = make_batch(model, num_frames=4)
    preds = []
    model.tmim_decoder.register_forward_hook(lambda m, a, o: preds.append(o))

    def predict(video: torch.Tensor, texts: list[str]) -> torch.Tensor:
        ids, amask = model.tokenize(texts)
        torch.manual_seed(3)
        with torch.no_grad():
            model.tmim_loss(video, batch["frame_mask"], model.text(ids, amask)[0], amask)
        return preds[-1]

    first = predict(batch["video"], batch["text"])
    torch.manual_seed(3)
    hidden = _hidden_pixels(make_keep(2, 4, 16, 0.75, "tube"), 4)
    torch.testing.assert_close(predict(batch["video"] + 5.0 * hidden, batch["text"]), first, rtol=0, atol=0)
    other = predict(batch["video"], list(reversed(batch["text"])))
    assert not torch.allclose(other, first)
    with pytest.raises(ValueError, match="text-guided decoder needs"):
        model.tmim_decoder(torch.zeros(2, 4, 4, 32), make_keep(2, 4, 16, 0.75), (4, 4), None)


def test_new_objectives_build_only_their_parts_and_name_their_keys():
    model = family(XFMConfig, mvm_weight=1.0, mmm_weight=1.0, tmim_weight=1.0, bbox_weight=1.0).train()
    batch = make_batch(model)
    batch["boxes"] = _boxes(2, 3)
    names = {k for k in model(batch) if k.endswith("_loss")}
    assert names == {f"{n}_loss" for n in ("itc", "itm", "mlm", "video_mlm", "mvm", "mmm", "tmim", "bbox")}
    plain = family()
    assert plain.tmim_decoder is None and plain.box_head is None
    with pytest.raises(ConfigError, match="^tmim_weight: this model was built without"):
        plain.tmim_loss(batch["video"], None, torch.zeros(2, 3, 32), torch.ones(2, 3, dtype=torch.bool))
    only_box = family(itc_weight=0.0, itm_weight=0.0, mlm_weight=0.0, video_mlm_weight=0.0, bbox_weight=1.0)
    assert only_box.fusion is not None and only_box.mlm_head is None and only_box.itm_head is None
    cfg = MaskingConfig.tiny(mmm_weight=1.0)
    framewise = TowerConfig("framewise", arch={"model_type": "x"})
    with pytest.raises(ConfigError, match="^mmm_weight: masked video modelling needs a video-ViT tower"):
        MaskingModel._check_masked_tower(
            _Stub(dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, tower=framewise))), "mmm_weight"
        )
    with pytest.raises(ConfigError, match="^mmm_video_ratio"):
        MaskingConfig.tiny(mmm_video_ratio=1.0)
    with pytest.raises(ConfigError, match="^mmm_text_ratio"):
        MaskingConfig.tiny(mmm_text_ratio=0.0)
