"""The early-fusion family: what each loss trains, where visual ids live, text-only captions, and learning.

The family-wide contract (losses, T = 1, save / load, padding, every tower kind, device reads) is in
``test_registry.py`` and ``test_device_reads.py``; these tests check what is particular to early fusion.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.models.test_registry import CAPTIONS, make_batch
from vidvlm.errors import ConfigError
from vidvlm.models.early_fusion import EarlyFusion, EarlyFusionConfig, PixelDecoderConfig
from vidvlm.models.registry import load


def tiny(**overrides) -> EarlyFusion:
    torch.manual_seed(0)
    model = EarlyFusion(EarlyFusionConfig.tiny(**overrides))
    model.prepare_for_training(CAPTIONS)
    return model


def _grads(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_language_losses_train_the_decoder_and_reconstruction_trains_the_tokenizer():
    """Ids carry no gradient: the decoder's losses never reach the front-end; the pixel loss reaches only the
    tokenizer (front-end and pixel decoder)."""
    model = tiny().train()
    batch = make_batch(model)
    random.seed(0)
    out = model(batch)
    (out["caption_loss"] + out["visual_loss"]).backward()
    assert _grads(model.decoder) > 0
    assert _grads(model.front_end) == 0 and _grads(model.pixel_decoder) == 0
    model.zero_grad(set_to_none=True)
    random.seed(0)
    model(batch)["recon_loss"].backward()
    assert _grads(model.front_end) > 0 and _grads(model.pixel_decoder) > 0
    assert _grads(model.decoder) == 0


def test_visual_ids_have_their_own_range_and_padded_frames_are_hidden():
    model = tiny().eval()
    batch = make_batch(model)  # the second clip's last frame is padding
    with torch.no_grad():
        _, indices, out = model.quantize(batch["video"], batch["frame_mask"])
    seq = model.visual_sequence(indices, out.mask)
    text_vocab, k = model.config.decoder.vocab_size, model.quantizer.codebook_size
    assert model.require_tokenizer().vocab_size <= text_vocab
    assert (seq[:, 0] == model.bov_id).all() and (seq[:, -1] == model.eov_id).all()
    real = seq[:, 1:-1][out.mask]
    assert ((real >= text_vocab) & (real < text_vocab + k)).all()
    assert (~out.mask).any() and (seq[:, 1:-1][~out.mask] == model.bov_id).all()
    # the padded frame's pixels change nothing the model outputs or is trained on
    changed = {**batch, "video": batch["video"].clone()}
    changed["video"][1, -1] = 5.0
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(batch)
        torch.manual_seed(0)
        b = model(changed)
    for name in ("caption_loss", "visual_loss", "recon_loss"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


@pytest.mark.parametrize("loss", ["l2", "l1"])
def test_reconstruction_loss_is_the_chosen_error_over_real_frames(loss):
    """``pixels.loss`` picks the per-pixel error; padded frames do not count."""
    model = tiny(pixels=PixelDecoderConfig(size=8, hidden=32, loss=loss)).eval()
    batch = make_batch(model)
    with torch.no_grad():
        rebuilt = model.reconstruct(batch["video"], batch["frame_mask"])
        diff = rebuilt - model.pixel_decoder.target(batch["video"])
        per_pixel = diff.abs() if loss == "l1" else diff.square()
        expected = per_pixel[batch["frame_mask"]].mean()
        got = model(batch)["recon_loss"]
    torch.testing.assert_close(got, expected)


def test_captions_are_text_even_where_visual_ids_score_higher():
    model = tiny().eval()
    batch = make_batch(model)
    before = model.generate(batch["video"], batch["frame_mask"])
    with torch.no_grad():
        model.decoder.head.bias[model.visual_offset :] += 1e4  # every visual id far above every text id
    after = model.generate(batch["video"], batch["frame_mask"])
    assert after == before and all(isinstance(s, str) for s in after)


def test_the_decoder_reads_the_ids_not_the_vectors():
    """Front-end outputs that differ but round to the same codes give exactly the same language losses (a decoder
    fed the vectors before rounding would not)."""
    model = tiny().eval()
    batch = make_batch(model, pad_last=False)
    bias = list(model.front_end.connector.parameters())[-1]
    with torch.no_grad():
        before = model.front_end(batch["video"]).tokens
        _, indices, _ = model.quantize(batch["video"])
        torch.manual_seed(0)
        a = model(batch)
        bias.add_(1e-5)  # moves every vector a little, (almost surely) none across a rounding edge
        after = model.front_end(batch["video"]).tokens
        _, indices2, _ = model.quantize(batch["video"])
        torch.manual_seed(0)
        b = model(batch)
    assert not torch.equal(before, after) and torch.equal(indices, indices2)
    for name in ("caption_loss", "visual_loss"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    tokens, _ = model.visual_tokens(batch["video"])
    torch.testing.assert_close(tokens, model.decoder.token_embed(indices + model.visual_offset), rtol=0, atol=0)


def test_overfits_two_clips_and_rebuilds_them(tmp_path):
    """A few hundred steps on two clips: each is captioned with its own caption, the pixel error falls, and the
    saved model captions them the same."""
    model = tiny(levels=[8, 5, 5], pixels=PixelDecoderConfig(size=8, hidden=64))
    batch = make_batch(model, pad_last=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for _ in range(250):
        out = model(batch)
        first = first if first is not None else float(out["recon_loss"].detach())
        opt.zero_grad()
        sum(out.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float(model(batch)["recon_loss"]) < 0.5 * first
    captions = model.generate(batch["video"], batch["frame_mask"])
    assert captions == batch["text"]
    model.save_pretrained(tmp_path)
    assert load(tmp_path).eval().generate(batch["video"], batch["frame_mask"]) == captions


def test_caption_first_rows_teach_it_to_write_each_clip_from_its_caption():
    """With every caption laid out first (``text_first: 1``), two clips learnt by heart come back from their
    captions: ``generate_video`` writes each clip's own visual ids, and its frames are the pixel decoder's."""
    model = tiny(levels=[8, 5, 5], text_first=1.0, pixels=PixelDecoderConfig(size=8, hidden=64))
    batch = make_batch(model, pad_last=False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        out = model(batch)
        opt.zero_grad()
        sum(out.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        codes, indices, _ = model.quantize(batch["video"])
        frames, written = model.generate_video(batch["text"], num_frames=batch["video"].shape[1])
    assert torch.equal(written, indices)
    torch.testing.assert_close(frames, model.pixel_decoder(codes, None, batch["video"].shape[1]))
    assert frames.shape == (2, batch["video"].shape[1], 3, 8, 8)
    with pytest.raises(ConfigError, match="^text_first"):
        tiny().generate_video(["a red square moves left"])


def test_text_first_draw_is_per_training_row_and_never_a_question():
    model = tiny(text_first=0.5).train()
    torch.manual_seed(0)
    rows = model._text_first_rows(400, None)
    assert 150 < int(rows.sum()) < 250
    assert not model._text_first_rows(4, ["what colour"] * 4).any()
    assert model.eval()._text_first_rows(4, None) is None


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="^front_end.connector"):
        EarlyFusionConfig.tiny(front_end=EarlyFusionConfig().front_end.__class__())
    with pytest.raises(ConfigError, match="^pixels"):
        PixelDecoderConfig(size=0)
    with pytest.raises(ConfigError, match="^pixels.loss"):
        PixelDecoderConfig(loss="l3")
    with pytest.raises(ConfigError, match="^text_first"):
        EarlyFusionConfig.tiny(text_first=1.5)
    model = tiny(max_visual_tokens=2)
    with pytest.raises(ConfigError, match="^max_visual_tokens"):
        model.generate(*list(make_batch(model).values())[:2])
    with pytest.raises(ConfigError, match="^question"):
        model.generate(*list(make_batch(model).values())[:2], questions=["what colour", "what shape"])


@pytest.mark.timeout(300)
def test_recipe_trains_its_two_stages_resumes_exactly_and_captions_a_file(tmp_path, capsys):
    """configs/early_fusion_tiny_8f_shapes.yaml through tools/train.py (a few steps on generated clips): the
    tokenizer stage trains only the tokenizer, the language stage only the decoder, a run resumed at the stage
    boundary repeats the same losses, and tools/caption_video.py captions an MP4 with the result."""
    import importlib.util
    import json
    import shutil
    import sys
    from pathlib import Path

    from tests.tools.tiny_run import tiny_run_overrides

    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "tools"))
    import train as train_cli  # tools/ is not a package

    config = root / "configs" / "early_fusion_tiny_8f_shapes.yaml"
    data, full, part = tmp_path / "shapes", tmp_path / "full", tmp_path / "part"

    def args(out: Path) -> list[str]:
        images = [
            f"data.datasets.images.manifest={data}/images/manifest.jsonl",
            "data.synthetic.sets.images={num: 8, seed: 0, images: true, size: 32}",
        ]
        return [
            "--config",
            str(config),
            *tiny_run_overrides(out, data),
            *images,
            "stages.1.steps=4",
            "keep_checkpoints=4",
        ]

    def losses(out: Path) -> dict[int, dict[str, float]]:
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: {k: v for k, v in r.items() if k.endswith("loss")} for r in rows if "grad_norm" in r}

    assert train_cli.main(args(full)) == 0
    a = losses(full)
    names = {"caption_loss", "visual_loss", "recon_loss"}
    assert sorted(a) == list(range(1, 9)) and all(names <= set(r) for r in a.values())
    # the tokenizer is frozen in the language stage: the visual ids of a clip stay the same from step 4 to the end
    before, after = load(full / "checkpoint-00000004"), load(full / "final")
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        ids_before = before.eval().quantize(video)[1]
        ids_after = after.eval().quantize(video)[1]
    assert torch.equal(ids_before, ids_after)
    dec_before = dict(before.decoder.named_parameters())
    assert any(not torch.equal(p, dec_before[n]) for n, p in after.decoder.named_parameters())

    part.mkdir()
    shutil.copytree(full / "checkpoint-00000004", part / "checkpoint-00000004")
    assert train_cli.main([*args(part), "--resume", "auto"]) == 0
    b = losses(part)
    assert sorted(b) == [5, 6, 7, 8]
    for step in b:
        assert b[step] == pytest.approx(a[step], rel=1e-5), step

    spec = importlib.util.spec_from_file_location("caption_video", root / "tools" / "caption_video.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    clip = sorted((data / "val").glob("*.mp4"))[0]
    capsys.readouterr()
    assert cli.main([str(clip), "--model", str(full / "final"), "--format", "json", "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert isinstance(row["segments"][0]["text"], str)
