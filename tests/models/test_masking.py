"""Masked encoding and token dropping: the video ViT's visible-token path and the front-end's ``token_drop``."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tests.models.test_registry import CAPTIONS, make_batch
from vidvlm.errors import ConfigError
from vidvlm.layers.masking import (
    content_keep,
    content_scores,
    full_keep,
    hidden_positions,
    make_keep,
    mask_text,
    visible_mask,
)
from vidvlm.losses import clip_loss, hard_negatives, itm_loss, masked_pixel_loss, mlm_loss
from vidvlm.models.frontend import FrontEndConfig, TokenDropConfig, TowerConfig, VideoFrontEnd
from vidvlm.models.masking import MaskingConfig, MaskingModel, XFMConfig, XFMModel
from vidvlm.models.masking_heads import tubelet_pixels
from vidvlm.models.registry import build_model, load
from vidvlm.models.text import TextConfig
from vidvlm.models.tokenizer import TextTokenizer
from vidvlm.models.vision import VideoViT, VisionConfig

LAYOUTS = ["frame", "divided", "joint", "factorised"]


def vit(layout: str, **kw) -> VideoViT:
    """A tiny tower whose temporal parts are not the identity (as after training)."""
    torch.manual_seed(0)
    base = dict(image_size=16, patch_size=4, width=16, depth=2, num_heads=2, num_tubelets=4, temporal_depth=1)
    model = VideoViT(VisionConfig(layout=layout, **{**base, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("temporal", "pos_embed.temporal")):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def clips(t: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Two clips ``[2, t, 3, 16, 16]``, the second with its last frame padded (when t > 1)."""
    video = torch.randn(2, t, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, t, dtype=torch.bool)
    if t > 1:
        mask[1, -1] = False
        video[1, -1] = 0
    return video, mask


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tubelet", [1, 2])
def test_zero_mask_equals_unmasked_encoder(layout, tubelet):
    model = vit(layout, tubelet_size=tubelet)
    video, mask = clips(4)
    steps, n = model.token_grid(4, 16, 16)
    assert (steps, n) == (4 // tubelet, 16)
    with torch.no_grad():
        ref = model(video, mask, output_hidden_states=True)
        out = model(video, mask, output_hidden_states=True, keep=full_keep(2, steps, n))
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.pooler_output, ref.pooler_output)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states, strict=True))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("t", [1, 4])
def test_hidden_tokens_never_reach_the_encoder(layout, t):
    """Output has P + K tokens per step, and changing the pixels of hidden tube positions changes nothing (they were
    never gathered, so no attention mask can leak them). T = 1 runs the same code."""
    model = vit(layout, pool="avg")
    video, mask = clips(t)
    keep = make_keep(2, t, 16, 0.75, "tube", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(video, mask, keep=keep)
        hidden = torch.ones(2, 16, dtype=torch.bool).scatter(1, keep[:, 0], False)  # [B, N] hidden positions
        pix = hidden.view(2, 1, 1, 4, 1, 4, 1).expand(2, t, 3, 4, 4, 4, 4).reshape(2, t, 3, 16, 16)
        again = model(video + pix.float() * 5.0, mask, keep=keep)
    assert out.last_hidden_state.shape == (2, t, 1 + 4, 16)
    assert torch.isfinite(out.last_hidden_state).all()
    torch.testing.assert_close(again.last_hidden_state, out.last_hidden_state, rtol=0, atol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_masked_padding_is_honoured(layout):
    """A padded clip under a mask equals the same clip without the padded frame, under the same mask."""
    model = vit(layout)
    video, mask = clips(4)
    keep = make_keep(2, 4, 16, 0.5, "random", generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(video, mask, keep=keep)
        alone = model(video[1:, :3], keep=keep[1:, :3])
    torch.testing.assert_close(full.last_hidden_state[1, :3], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    assert bool((full.last_hidden_state[1, 3] == 0).all())


# -- token_drop on the front-end ---------------------------------------------------------------------------------


def front_end(ratio: float, kind: str = "random", **kw) -> VideoFrontEnd:
    torch.manual_seed(0)
    vision = VisionConfig(image_size=16, patch_size=4, width=16, depth=2, num_heads=2, num_tubelets=4, layout="joint")
    cfg = FrontEndConfig(tower=TowerConfig(vision=vision), num_frames=4, token_drop=TokenDropConfig(ratio, kind), **kw)
    return VideoFrontEnd(cfg)


@pytest.mark.parametrize("kind", ["random", "tube", "content"])
def test_token_drop_trains_on_fewer_tokens_and_is_off_at_eval(kind):
    plain, drop = front_end(0.0), front_end(0.75, kind)
    drop.load_state_dict(plain.state_dict())
    video, mask = clips(4)
    plain.eval(), drop.eval()
    with torch.no_grad():
        a, b = plain(video, mask), drop(video, mask)
    torch.testing.assert_close(b.tokens, a.tokens, rtol=0, atol=0)
    assert b.vision.last_hidden_state.shape[2] == 1 + 16
    drop.train()
    out = drop(video, mask)
    assert out.vision.last_hidden_state.shape[2] == 1 + 4  # class token + 25 % of 16 patches, every step
    assert out.tokens.shape == a.tokens.shape and torch.isfinite(out.tokens).all()
    (out.tokens * torch.randn_like(out.tokens)).sum().backward()  # a plain sum of normed tokens has no gradient
    assert drop.tower.patch_embed.proj.weight.grad.abs().sum() > 0


def test_content_drop_follows_the_object_in_tubelets_and_the_keyframe_step():
    """Tubelets of 2 frames plus the keyframe step: a 4 x 4-pixel square moving one patch per frame on a flat
    background stays visible in every step at 75 % dropping; padded frames are scored as the tower fills them."""
    torch.manual_seed(0)
    vision = VisionConfig(
        image_size=16, patch_size=4, width=16, depth=1, num_heads=2, num_tubelets=2, tubelet_size=2,
        keyframe_stream=True, layout="joint",
    )  # fmt: skip
    fe = VideoFrontEnd(
        FrontEndConfig(tower=TowerConfig(vision=vision), num_frames=4, token_drop=TokenDropConfig(0.75, "content"))
    ).train()
    video = torch.full((2, 4, 3, 16, 16), -1.0)
    for f in range(4):
        video[:, f, :, 4:8, 4 * f : 4 * f + 4] = 1.0  # row 1, column f: patch 4 + f
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    keep = fe.drop_keep(video, mask)
    assert keep.shape == (2, 3, 4)  # two tubelets and the keyframe step, 4 of 16 patches each
    for step, patches in enumerate([(4, 5), (6, 7)]):
        for p in patches:
            assert bool((keep[0, step] == p).any()), f"step {step}: patch {p} dropped"
    assert bool((keep[1, 1] == 6).any())  # the padded clip's second tubelet holds frame 2 twice
    out = fe(video, mask)
    assert out.vision.last_hidden_state.shape[:3] == (2, 3, 1 + 4)


def test_content_drop_random_share_reaches_the_front_end():
    """``random_share`` is what the front-end draws with: at share 1 the kept tokens are a random draw, which loses
    the moving square somewhere in 20 clips; at share 0 it is never lost."""
    torch.manual_seed(0)
    vision = VisionConfig(image_size=16, patch_size=4, width=16, depth=1, num_heads=2, num_tubelets=2, tubelet_size=2)
    video = torch.full((20, 4, 3, 16, 16), -1.0)
    for f in range(4):
        video[:, f, :, 4:8, 4 * f : 4 * f + 4] = 1.0  # row 1, column f: patch 4 + f

    def square_always_kept(share: float) -> bool:
        drop = TokenDropConfig(0.75, "content", random_share=share)
        fe = VideoFrontEnd(FrontEndConfig(tower=TowerConfig(vision=vision), num_frames=4, token_drop=drop)).train()
        keep = fe.drop_keep(video)
        return all(bool((keep[:, s] == p).any(-1).all()) for s, pair in enumerate([(4, 5), (6, 7)]) for p in pair)

    assert square_always_kept(0.0)
    assert not square_always_kept(1.0)


def test_content_at_eval_encodes_the_top_tokens_in_evaluation_too(tmp_path):
    """``at_eval``: eval mode encodes the content-chosen quarter of each step (the same forward as the plain
    front-end given that selection), the same tokens on every call and for a clip alone or in a batch; training
    still breaks ties at random; a saved model keeps the setting."""
    plain = front_end(0.0)
    drop = front_end(0.75, "content")
    drop.cfg.token_drop = TokenDropConfig(0.75, "content", at_eval=True)
    drop.set_token_drop(None)
    drop.load_state_dict(plain.state_dict())
    video, mask = clips(4)
    plain.eval(), drop.eval()
    with torch.no_grad():
        out = drop(video, mask)
        again = drop(video, mask)
        alone = drop(video[:1], mask[:1])
        full = plain(video, mask)
        steps, _ = drop.token_grid(video)
        scores = content_scores(video, 1, 4)
        keep = content_keep(scores, 0.75, random_ties=False)
        same = plain(video, mask, keep=keep)
    assert out.vision.last_hidden_state.shape[2] == 1 + 4
    torch.testing.assert_close(out.tokens, same.tokens, rtol=0, atol=0)
    torch.testing.assert_close(again.tokens, out.tokens, rtol=0, atol=0)
    torch.testing.assert_close(alone.tokens, out.tokens[:1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out.tokens, full.tokens, atol=1e-3)  # it really encodes fewer tokens
    with torch.no_grad():  # an image (T = 1): ranked by contrast alone, the same path
        image = drop(video[:, :1])
        image_keep = content_keep(content_scores(video[:, :1], 1, 4), 0.75, random_ties=False)
        torch.testing.assert_close(image.tokens, plain(video[:, :1], keep=image_keep).tokens, rtol=0, atol=0)
    assert image.vision.last_hidden_state.shape[1:3] == (1, 1 + 4)
    flat = torch.zeros_like(video)  # every patch ties
    assert drop.drop_keep(flat).tolist() == [[[0, 1, 2, 3]] * steps] * 2  # evaluation: ties by position
    drop.train()
    a, b = drop.drop_keep(flat), drop.drop_keep(flat)
    assert a.shape == (2, steps, 4) and not torch.equal(a, b)  # training: ties at random, as before
    from vidvlm.models.contrastive import ContrastiveConfig  # a saved model is evaluated the same way

    cfg = ContrastiveConfig.tiny()
    cfg = dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, token_drop=drop.cfg.token_drop))
    model = build_model(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m").eval()
    assert loaded.front_end.cfg.token_drop.at_eval
    batch = make_batch(model)
    with torch.no_grad():
        saved, kept = (
            model.encode_video(batch["video"], batch["frame_mask"]),
            loaded.encode_video(batch["video"], batch["frame_mask"]),
        )
    torch.testing.assert_close(kept, saved, rtol=0, atol=0)
    assert loaded.front_end.drop_keep(batch["video"], batch["frame_mask"]) is not None
    with pytest.raises(ConfigError, match="front_end.token_drop.at_eval: needs kind 'content'"):
        TokenDropConfig(0.5, "random", at_eval=True)
    with pytest.raises(ConfigError, match="front_end.token_drop.at_eval: needs kind 'content'"):
        TokenDropConfig(0.0, "content", at_eval=True)
    with pytest.raises(ConfigError, match="stage 'x': at_eval belongs"):
        drop.set_token_drop(TokenDropConfig(0.5, "content", at_eval=True), "stage 'x'")


def test_token_drop_refuses_what_cannot_drop():
    with pytest.raises(ConfigError, match="front_end.token_drop.ratio"):
        TokenDropConfig(1.0)
    with pytest.raises(ConfigError, match="front_end.token_drop.kind"):
        TokenDropConfig(0.5, "block")
    with pytest.raises(ConfigError, match="front_end.token_drop.random_share: only kind 'content'"):
        TokenDropConfig(0.5, "random", random_share=0.5)
    with pytest.raises(ConfigError, match="front_end.token_drop.random_share: must lie"):
        TokenDropConfig(0.5, "content", random_share=-0.1)
    with pytest.raises(ConfigError, match="front_end.token_drop: pooler 'spatial2d'"):
        dataclasses.replace(FrontEndConfig(token_drop=TokenDropConfig(0.5)), pooler=_pooler("spatial2d"))
    cfg = FrontEndConfig(tower=TowerConfig("framewise", arch={"model_type": "x"}), token_drop=TokenDropConfig(0.5))
    with pytest.raises(ConfigError, match="front_end.token_drop: a 'framewise' tower"):
        VideoFrontEnd(cfg, tower=_NoKeepTower())


def _pooler(name: str):
    from vidvlm.layers.pooling import PoolerConfig

    return PoolerConfig(name)


class _NoKeepTower(torch.nn.Module):
    """A stand-in for a tower without a visible-token path (only its width is read)."""

    width = 16


# -- the objectives against hand-computed cases -------------------------------------------------------------------


def test_hard_negatives_hand_case():
    sim = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 4.0], [9.0, 9.0, 8.0]])
    pos = torch.eye(3, dtype=torch.bool)
    assert hard_negatives(sim, pos, sample=False).tolist() == [1, 2, 0]
    pos[1] = True  # row 1 has no negative left
    assert hard_negatives(sim, pos, sample=False).tolist() == [1, -1, 0]
    # sampling: never a positive, and in proportion to softmax over the negatives (row 0: e^5 : e^2 over cols 1, 2)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([hard_negatives(sim, torch.eye(3, dtype=torch.bool), generator=g) for _ in range(4000)])
    assert not bool((draws == torch.arange(3)).any())
    share = (draws[:, 0] == 1).float().mean().item()
    assert share == pytest.approx(math.exp(5) / (math.exp(5) + math.exp(2)), abs=0.02)


def test_itm_and_mlm_losses_hand_case():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    assert itm_loss(logits, torch.tensor([True, False])).item() == pytest.approx(math.log(4 / 3))
    vocab = torch.tensor([[[0.0, 0.0, math.log(2.0)], [5.0, -5.0, 0.0]]])  # [1, 2, 3]
    assert mlm_loss(vocab, torch.tensor([[2, -100]])).item() == pytest.approx(math.log(2.0))
    none = mlm_loss(vocab.requires_grad_(), torch.tensor([[-100, -100]]))
    assert none.item() == 0.0 and none.requires_grad
    # weighted, not selected: the same values as cross-entropy over the chosen rows alone
    g = torch.Generator().manual_seed(0)
    logits, matched = torch.randn(5, 2, generator=g), torch.tensor([True, False, False, True, False])
    scored = torch.tensor([True, True, False, True, False])
    torch.testing.assert_close(itm_loss(logits, matched, scored), itm_loss(logits[scored], matched[scored]))
    assert itm_loss(logits.requires_grad_(), matched, torch.zeros(5, dtype=torch.bool)).item() == 0.0
    vocab, labels = torch.randn(2, 3, 7, generator=g), torch.tensor([[1, -100, 4], [-100, -100, 6]])
    picked = labels != -100
    torch.testing.assert_close(mlm_loss(vocab, labels), F.cross_entropy(vocab[picked], labels[picked]))


def test_masked_pixel_loss_hand_case():
    pred = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1.0, 3.0], [100.0, -100.0]]]])
    hidden = torch.tensor([[[True, False]]])  # only the first tubelet is scored
    # normalised target: (x - 2) / sqrt(var=2) = -+1/sqrt(2): squared error 0.5 each
    assert masked_pixel_loss(pred, target, hidden, eps=0.0).item() == pytest.approx(0.5)
    assert masked_pixel_loss(pred, target, hidden, norm_pix=False).item() == pytest.approx((1 + 9) / 2)
    assert masked_pixel_loss(pred, target, torch.zeros_like(hidden)).item() == 0.0
    # the hidden tubelets alone (scored=None), and none at all
    assert masked_pixel_loss(pred[:, :, :1], target[:, :, :1], eps=0.0).item() == pytest.approx(0.5)
    empty = masked_pixel_loss(pred[:, :, :0].requires_grad_(), target[:, :, :0])
    assert empty.item() == 0.0 and empty.requires_grad


def test_mask_text_exact_count_and_bert_split():
    ids = torch.tensor([[1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 2, 0], [1, 20, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    amask = ids != 0
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_text(ids, amask, 0.2, mask_id=63, vocab_size=60, special_ids=(0, 1, 2), generator=g)
    picked = labels != -100
    assert picked.sum(1).tolist() == [2, 1]  # round(0.2 * 10) and at least one of one
    assert torch.equal(labels[picked], ids[picked]) and not bool(picked[ids <= 2].any())
    assert torch.equal(masked[~picked], ids[~picked])  # nothing else changes
    big = torch.arange(3, 1003).repeat(50, 1)
    masked, labels = mask_text(big, torch.ones_like(big, dtype=torch.bool), 0.5, 2000, 1000, generator=g)
    picked = labels != -100
    assert (picked.sum(1) == 500).all()
    share = (masked[picked] == 2000).float().mean().item()
    assert share == pytest.approx(0.8, abs=0.01)
    assert (masked[picked] != big[picked]).float().mean().item() == pytest.approx(0.9, abs=0.01)


# -- the family --------------------------------------------------------------------------------------------------


def family(cls=MaskingConfig, **kw) -> MaskingModel:
    torch.manual_seed(0)
    model = build_model(cls.tiny(**kw))
    model.prepare_for_training(CAPTIONS)
    return model


def test_presets_and_objectives():
    flava, xfm = family(), family(XFMConfig)
    assert type(flava) is MaskingModel and type(xfm) is XFMModel
    assert (flava.config.stop_gradient, flava.config.video_mlm_ratio) == (False, 0.15)
    assert (xfm.config.stop_gradient, xfm.config.video_mlm_ratio, xfm.config.mlm_ratio) == (True, 0.5, 0.15)
    model = family(mvm_weight=1.0, itm_weight=0.5)
    model.train()
    out = model(make_batch(model))
    assert {k for k in out if k.endswith("_loss")} == {"itc_loss", "itm_loss", "mlm_loss", "video_mlm_loss", "mvm_loss"}
    only_itc = family(itm_weight=0.0, mlm_weight=0.0, video_mlm_weight=0.0)
    assert only_itc.fusion is None and only_itc.mlm_head is None and only_itc.decoder is None
    assert {k for k in only_itc(make_batch(only_itc)) if k.endswith("_loss")} == {"itc_loss"}


def test_itc_is_clip_loss_on_the_embeddings_and_weights_scale():
    model = family(itc_weight=2.0, itm_weight=0.0, mlm_weight=0.0, video_mlm_weight=0.0).eval()
    batch = make_batch(model)
    with torch.no_grad():
        out = model(batch)
        video, text = model.encode_video(batch["video"], batch["frame_mask"]), model.encode_text(batch["text"])
        ref = clip_loss(video, text, model.logit_scale.exp())
    torch.testing.assert_close(out["itc_loss"], 2.0 * ref)


def test_stop_gradient_keeps_fusion_losses_out_of_the_text_encoder():
    for cls, reaches in ((MaskingConfig, True), (XFMConfig, False)):
        model = family(cls, itc_weight=0.0, mlm_weight=0.0).train()
        out = model(make_batch(model))
        (out["itm_loss"] + out["video_mlm_loss"]).backward()
        grads = [p.grad for p in model.text.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert bool(grads) is reaches, cls.__name__
        assert model.fusion.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("num_frames", [4, 1])
def test_mvm_encodes_visible_tokens_only(num_frames):
    """The tower gets P + K tokens per step under a 75 % tube mask, the loss reads the pixels and trains the tower;
    an image (T = 1) takes the same path."""
    model = family(mvm_weight=1.0, mvm_ratio=0.75).train()  # 32 px / 8 px patches: 16 per step, 4 visible
    batch = make_batch(model, num_frames=num_frames)
    seen = []
    tower = model.front_end.base_tower
    tower.register_forward_hook(lambda m, a, o: seen.append(o.last_hidden_state.shape))
    torch.manual_seed(5)
    first = model.mvm_loss(batch["video"], batch["frame_mask"])
    assert seen[-1][2] == 1 + 4 and torch.isfinite(first)
    torch.manual_seed(5)
    noisy = batch["video"] + 3.0 * torch.randn_like(batch["video"])
    second = model.mvm_loss(noisy, batch["frame_mask"])
    assert not torch.equal(first, second)
    first.backward()
    assert tower.patch_embed.proj.weight.grad.abs().sum() > 0


def test_mvm_hidden_pixels_do_not_reach_the_prediction():
    model = family(mvm_weight=1.0, mvm_ratio=0.75).eval()
    batch = make_batch(model, num_frames=4)
    preds = []
    model.decoder.register_forward_hook(lambda m, a, o: preds.append(o.detach()))
    torch.manual_seed(7)
    keep = make_keep(2, 4, 16, 0.75, "tube")
    hidden = ~visible_mask(keep, 16)[:, 0]  # [B, N], the same positions in every step
    pix = hidden.view(2, 1, 1, 4, 1, 4, 1).expand(2, 4, 3, 4, 8, 4, 8).reshape(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        model.mvm_loss(batch["video"], batch["frame_mask"])
        torch.manual_seed(7)
        model.mvm_loss(batch["video"] + 5.0 * pix.float(), batch["frame_mask"])
    torch.testing.assert_close(preds[1], preds[0], rtol=0, atol=0)


def test_hidden_positions_are_the_complement_of_keep():
    keep = make_keep(3, 2, 16, 0.75, "random", generator=torch.Generator().manual_seed(4))
    hidden = hidden_positions(keep, 16)
    assert hidden.shape == (3, 2, 12)
    assert bool((hidden.diff(dim=2) > 0).all())  # ascending within a step
    both = torch.cat([keep, hidden], dim=2).sort(dim=2).values
    torch.testing.assert_close(both, full_keep(3, 2, 16))


@pytest.mark.parametrize("num_frames", [3, 1])
def test_mvm_loss_scores_exactly_the_hidden_real_tubelets(num_frames):
    """The decoder's head runs on the hidden positions only; the loss equals VideoMAE's recipe written out on every
    tubelet: normalised targets, squared error per tubelet, mean over hidden tubelets of real time steps (with 3
    frames in 2-frame tubelets the padded clip's second step is padding and is not scored)."""
    model = family(mvm_weight=1.0, mvm_ratio=0.75).train()
    batch = make_batch(model, num_frames=num_frames)
    video, frame_mask = batch["video"], batch["frame_mask"]
    torch.manual_seed(11)
    loss = model.mvm_loss(video, frame_mask)
    # the reference: the same mask, the decoder's output at every position, the loss by hand
    tower, vision = model.front_end.base_tower, model.front_end.base_tower.cfg
    steps, n = model.front_end.token_grid(video)
    torch.manual_seed(11)
    keep = make_keep(video.shape[0], steps, n, 0.75, "tube")
    enc = tower(video, frame_mask, keep=keep)
    grid = (video.shape[-2] // vision.patch_size, video.shape[-1] // vision.patch_size)
    every = model.decoder(enc.last_hidden_state[:, :, tower.num_prefix_tokens :], keep, grid, enc.frame_mask)
    assert every.shape[2] == n
    target, real = tubelet_pixels(video, frame_mask, vision.patch_size, vision.tubelet_size)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    scored = ~visible_mask(keep, n)
    if real is not None:
        scored = scored & real[:, :, None]
    err = ((every - target) ** 2).mean(-1)
    expected = err[scored].mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    if num_frames == 3:  # scoring the padded step too would give another figure
        assert real is not None and not bool(real[1, -1])
        assert not torch.allclose(loss, err[~visible_mask(keep, n)].mean())
    loss.backward()
    assert model.decoder.head.weight.grad.abs().sum() > 0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="^mvm_weight: masked video modelling needs a video-ViT tower"):
        tower = TowerConfig("framewise", arch={"model_type": "x"})
        cfg = MaskingConfig.tiny(mvm_weight=1.0)
        MaskingModel._build_decoder(
            _Stub(dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, tower=tower)))
        )
    with pytest.raises(ConfigError, match="^text.causal"):
        MaskingConfig.tiny(text=TextConfig(vocab_size=64, width=32, depth=1, num_heads=2, causal=True))
    with pytest.raises(ConfigError, match="^family: XFMConfig is for 'xfm'"):
        XFMConfig.tiny(family="flava")
    with pytest.raises(ConfigError, match="at least one objective"):
        MaskingConfig.tiny(itc_weight=0, itm_weight=0, mlm_weight=0, video_mlm_weight=0)
    with pytest.raises(ConfigError, match="^mvm_ratio"):
        MaskingConfig.tiny(mvm_ratio=1.0)
    with pytest.raises(ConfigError, match="^text.vocab_size: the tokenizer has"):
        family().set_tokenizer(TextTokenizer.train([" ".join(f"w{i}" for i in range(80))], 64, kind="word"))


class _Stub:
    """Just what ``_build_decoder`` reads: a config and a front-end without a visible-token path."""

    _check_masked_tower = MaskingModel._check_masked_tower

    def __init__(self, cfg):
        self.config = cfg
        self.front_end = VideoFrontEnd(dataclasses.replace(cfg.front_end, tower=TowerConfig()), tower=_NoKeepTower())


# -- a masked run resumes exactly through tools/train.py ---------------------------------------------------------


@pytest.mark.timeout(300)
def test_masked_run_resumes_exactly(tmp_path):
    import json
    import shutil
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tools"))
    import train as train_cli  # tools/ is not a package

    data = tmp_path / "shapes"

    def overrides(out: Path) -> list[str]:
        from tests.tools.tiny_run import tiny_run_overrides

        return tiny_run_overrides(out, data)

    def losses(out: Path) -> dict[int, dict[str, float]]:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: {k: v for k, v in r.items() if k.endswith("loss")} for r in rows if "grad_norm" in r}

    config = root / "configs" / "masking_tiny_8f_shapes.yaml"
    full, part = tmp_path / "full", tmp_path / "part"
    assert train_cli.main(["--config", str(config), *overrides(full)]) == 0
    part.mkdir()
    shutil.copytree(full / "checkpoint-00000002", part / "checkpoint-00000002")
    assert train_cli.main(["--config", str(config), *overrides(part), "--resume"]) == 0
    a, b = losses(full), losses(part)
    assert sorted(b) == [3, 4] and {"loss"} < set(a[3])
    for step in (3, 4):
        assert b[step] == pytest.approx(a[step], rel=1e-5), step
    model = load(full / "final")
    assert type(model) is MaskingModel and model.decoder is not None


@pytest.mark.timeout(300)
def test_xfm_recipe_trains_box_and_text_guided_objectives(tmp_path):
    """The X-FM config through tools/train.py on one-shape scenes: the boxes reach the model through the dataset,
    the collate and the trainer, and every objective of the recipe is logged and finite."""
    import json
    import sys
    from pathlib import Path

    from tests.tools.tiny_run import tiny_run_overrides

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tools"))
    import train as train_cli  # tools/ is not a package

    data, out = tmp_path / "scenes", tmp_path / "run"
    args = tiny_run_overrides(out, data) + [
        "data.synthetic.sets.train={num: 16, seed: 0, split: train, frames: 4, size: 32, shapes: 1}",
        "data.synthetic.sets.val={num: 8, seed: 0, split: val, frames: 4, size: 32, shapes: 1}",
        "stages.0.steps=2",
    ]
    assert train_cli.main(["--config", str(root / "configs" / "xfm_tiny_8f_shapes.yaml"), *args]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "grad_norm" in r]
    names = {"itc_loss", "itm_loss", "mlm_loss", "video_mlm_loss", "tmim_loss", "bbox_loss"}
    assert logged and all(names <= set(r) and all(math.isfinite(r[k]) for k in names) for r in logged)
    assert not {"mvm_loss", "mmm_loss"} & set(logged[0])
    model = load(out / "final")
    assert type(model) is XFMModel and model.box_head is not None and model.tmim_decoder is not None


def test_itm_scores_and_tower_reuse(tmp_path):
    """ITM scores pairs for re-ranking; a saved masking model serves as another family's tower (``checkpoint``)."""
    from vidvlm.models.contrastive import ContrastiveConfig

    model = family(mvm_weight=1.0).eval()
    batch = make_batch(model)
    scores = model.itm_scores(batch["video"], batch["frame_mask"], batch["text"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    with pytest.raises(ConfigError, match="^itm_weight"):
        family(itm_weight=0.0).itm_scores(batch["video"], batch["frame_mask"], batch["text"])
    model.save_pretrained(tmp_path / "masking")
    cfg = ContrastiveConfig.tiny()
    tower = TowerConfig("checkpoint", source=str(tmp_path / "masking"))
    other = build_model(dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, tower=tower)))
    state = model.front_end.base_tower.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in other.front_end.tower.state_dict().items())
