"""The contrastive family: losses through the model, multi-positive captions, masks, LiT locking, pretrained towers
(tiny HF BERT text model and CLIP vision model saved locally), tokenizers and checkpoints."""

from __future__ import annotations

import dataclasses
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from vidvlm.config import from_dict
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.pooling import PoolerConfig
from vidvlm.losses import clip_loss, siglip_loss
from vidvlm.models.contrastive import ContrastiveConfig, ContrastiveModel
from vidvlm.models.frontend import TowerConfig
from vidvlm.models.registry import load
from vidvlm.models.text import HFTextEncoder, TextConfig
from vidvlm.models.tokenizer import TextTokenizer
from vidvlm.models.vision import VisionConfig

CAPTIONS = ["a red square moves left", "a blue circle moves right", "a green square bounces", "red and blue"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "square", "circle", "moves"]


def tiny_config(**overrides) -> ContrastiveConfig:
    """``ContrastiveConfig.tiny`` with front-end keys (``vision``, ``vision_source``, ``pooler``, ``pool_input``,
    ``normalize``) placed in its ``front_end``."""
    cfg = ContrastiveConfig.tiny()
    fe = {k: overrides.pop(k) for k in ("pooler", "pool_input", "normalize") if k in overrides}
    if "vision" in overrides:
        fe["tower"] = TowerConfig(vision=overrides.pop("vision"))
    if "vision_source" in overrides:
        fe["tower"] = TowerConfig("pretrained", cfg.front_end.tower.vision, source=overrides.pop("vision_source"))
    return dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, **fe), **overrides)


def tiny(**overrides) -> ContrastiveModel:
    torch.manual_seed(0)
    model = ContrastiveModel(tiny_config(**overrides))
    model.prepare_for_training(CAPTIONS)
    return model


def clips(b: int = 2, t: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_forward_is_the_named_loss_on_the_embeddings(loss):
    model = tiny(loss=loss, captions_per_video=2).eval()
    video = clips()
    batch = {"video": video, "text": CAPTIONS[:2], "captions": [CAPTIONS[:1], CAPTIONS[1:4]]}
    out = model(batch)
    # eval picks the first K captions, cycling: video 0 -> [c0, c0], video 1 -> [c1, c2]
    texts = [CAPTIONS[0], CAPTIONS[0], CAPTIONS[1], CAPTIONS[2]]
    v, t, t2v = model.encode_video(video), model.encode_text(texts), torch.tensor([0, 0, 1, 1])
    if loss == "clip":
        assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
        assert model.logit_bias is None
        ref = clip_loss(v, t, model.logit_scale.exp(), t2v)
    else:
        assert model.logit_scale.item() == pytest.approx(math.log(10))
        assert model.logit_bias.item() == -10.0
        ref = siglip_loss(v, t, model.logit_scale.exp(), model.logit_bias, t2v)
    torch.testing.assert_close(out["contrastive_loss"], ref)
    assert out["logit_scale"].item() == pytest.approx(model.logit_scale.exp().item())
    assert torch.allclose(v.norm(dim=-1), torch.ones(2)) and torch.allclose(t.norm(dim=-1), torch.ones(4))


def test_training_caption_sampling_draws_from_each_videos_captions():
    model = tiny(captions_per_video=3).train()
    batch = {"video": clips(), "text": ["x", "y"], "captions": [["a", "b"], ["c", "d", "e", "f"]]}
    texts, t2v = model.select_captions(batch)
    assert t2v.tolist() == [0, 0, 0, 1, 1, 1]
    assert set(texts[:3]) == {"a", "b"} and set(texts[3:]).issubset({"c", "d", "e", "f"}) and len(set(texts[3:])) == 3
    one = tiny().train()
    texts, t2v = one.select_captions(batch)
    assert texts == ["x", "y"] and t2v.tolist() == [0, 1]


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_hard_negatives_are_columns_for_no_video_in_training_only(loss, caplog):
    """With ``hard_negatives`` the training loss is the named loss over the captions plus each video's drawn negatives
    (text_to_video -1); a negative equal to a caption of the batch is dropped; evaluation leaves them out."""
    model = tiny(loss=loss, hard_negatives=2).train()
    video = clips()
    negatives = [["a red square moves right", "a red circle moves left", CAPTIONS[1]], ["a blue circle moves left"]]
    batch = {"video": video, "text": CAPTIONS[:2], "negatives": negatives}
    random.seed(7)
    drawn = model.draw_negatives(batch, CAPTIONS[:2], training=True)
    assert CAPTIONS[1] not in drawn and set(drawn) <= set(negatives[0] + negatives[1])
    assert drawn[-1] == "a blue circle moves left" and 1 <= len(drawn) <= 3  # up to 2 of video 0's, 1 of video 1's
    random.seed(7)
    out = model(batch)["contrastive_loss"]
    texts = CAPTIONS[:2] + drawn
    t2v = torch.tensor([0, 1] + [-1] * len(drawn))
    v, t = model.encode_video(video), model.encode_text(texts)
    if loss == "clip":
        ref = clip_loss(v, t, model.logit_scale.exp(), t2v)
    else:
        ref = siglip_loss(v, t, model.logit_scale.exp(), model.logit_bias, t2v)
    torch.testing.assert_close(out, ref)
    plain = tiny(loss=loss).train()({"video": video, "text": CAPTIONS[:2]})["contrastive_loss"]
    assert not torch.allclose(out, plain)  # the negatives took part
    model.eval()
    torch.testing.assert_close(model(batch)["contrastive_loss"], plain)
    model.train()
    with caplog.at_level("WARNING", logger="vidvlm.models.negatives"):
        model({"video": video, "text": CAPTIONS[:2]})
        model({"video": video, "text": CAPTIONS[:2]})
    assert sum("no 'negatives'" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "layout,tubelet,keyframe", [("frame", 1, False), ("divided", 1, False), ("joint", 2, False), ("joint", 2, True)]
)
def test_padded_frames_do_not_change_the_embedding(layout, tubelet, keyframe):
    vision = VisionConfig(image_size=32, patch_size=16, width=32, depth=1, num_heads=2, num_tubelets=4,
                          layout=layout, tubelet_size=tubelet, keyframe_stream=keyframe)  # fmt: skip
    model = tiny(vision=vision).eval()
    video = clips(b=1, t=2)
    padded = torch.cat([video, 5 * torch.randn(1, 2, 3, 32, 32)], dim=1)
    mask = torch.tensor([[True, True, False, False]])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_video(padded, mask), model.encode_video(video), atol=1e-5, rtol=1e-5)
        image = model.encode_video(video[:, :1])  # T = 1
    assert image.shape == (1, 16) and torch.isfinite(image).all()


def test_per_frame_pooler_ignores_padded_frames():
    """A pooler with one token group per frame (spatial2d over all tokens) averages only the real frames' slots."""
    pooler = PoolerConfig("spatial2d", {"size": 1, "num_prefix_tokens": 1})
    model = tiny(pool_input="tokens", pooler=pooler).eval()
    video = clips(b=1, t=2)
    padded = torch.cat([video, torch.randn(1, 1, 3, 32, 32)], dim=1)
    with torch.no_grad():
        got = model.encode_video(padded, torch.tensor([[True, True, False]]))
        torch.testing.assert_close(got, model.encode_video(video), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal,pooling", [(True, "eos"), (False, "mean"), (False, "cls")])
def test_text_embedding_does_not_depend_on_padding(causal, pooling):
    text = TextConfig(vocab_size=128, context_length=16, width=32, depth=2, num_heads=2, causal=causal, pooling=pooling)
    model = tiny(text=text).eval()
    with torch.no_grad():
        alone = model.encode_text(["red"])
        batched = model.encode_text(["red", "a red square moves left and a blue circle moves right"])
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_transform_gives_the_model_input():
    model = tiny(normalize="siglip")
    out = model.transform(torch.full((2, 3, 40, 50), 255, dtype=torch.uint8))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones_like(out))  # siglip preset: (1 - 0.5) / 0.5


def test_lit_locking_native_towers():
    model = tiny(lock_vision=True, lock_vision_unlocked_layers=1, lock_text=True)
    blocks = model.front_end.tower.blocks
    assert all(not p.requires_grad for p in blocks[0].parameters())
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert all(p.requires_grad for p in model.front_end.tower.norm.parameters())
    assert not model.front_end.tower.patch_embed.proj.weight.requires_grad
    assert all(not p.requires_grad for p in model.text.parameters())
    assert model.text_proj.weight.requires_grad and model.video_proj.weight.requires_grad
    model.train()
    model({"video": clips(), "text": CAPTIONS[:2]})["contrastive_loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert {n for n, _ in model.trainable_parameters()} >= {"video_proj.weight", "text_proj.weight", "logit_scale"}
    with pytest.raises(ConfigError, match="unlocked layers"):
        tiny(lock_text=True, lock_text_unlocked_layers=5)


def test_tokenizer_required_and_must_fit():
    model = ContrastiveModel(ContrastiveConfig.tiny())
    with pytest.raises(ConfigError, match="prepare_for_training"):
        model.encode_text(["a red square"])
    big = TextTokenizer.train([" ".join(f"w{i}" for i in range(300))], vocab_size=400, kind="word")
    with pytest.raises(ConfigError, match="vocab_size"):
        model.set_tokenizer(big)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "word"])
def test_trained_tokenizer_round_trip(kind, tmp_path):
    tok = TextTokenizer.train(CAPTIONS * 3, vocab_size=300, kind=kind)
    ids, mask = tok.encode(["A red square moves LEFT", "red"], max_len=5)
    assert ids.shape == mask.shape and ids.shape[0] == 2 and ids.shape[1] <= 5 and mask.dtype == torch.bool
    eos = tok.hf.convert_tokens_to_ids("<eos>")
    assert ids[0, 4].item() == eos  # truncation keeps the end token
    assert mask[1].sum() < mask[0].sum() and (ids[1][~mask[1]] == tok.pad_id).all()
    tok.hf.padding_side = "left"  # e.g. an LM's tokenizer: encode still pads on the right (causal towers need it)
    assert torch.equal(tok.encode(["A red square moves LEFT", "red"], max_len=5)[1], mask) and mask[1, 0]
    tok.hf.padding_side = "right"
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert torch.equal(again.encode(["A red square moves LEFT", "red"], 5)[0], ids)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        TextTokenizer.load(tmp_path.parent)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """A tiny random BERT (with a WordPiece tokenizer) and a tiny CLIP vision model, saved as local HF dirs."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=32))  # fmt: skip
    bert.save_pretrained(root / "bert")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(root / "bert")
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, image_size=32, patch_size=16))  # fmt: skip
    clip.save_pretrained(root / "clip")
    return root, bert.eval(), clip.eval()


def test_hf_text_tower_matches_transformers(hf_dirs):
    root, bert, _ = hf_dirs
    text = TextConfig(kind="hf", source=str(root / "bert"), pooling="cls", context_length=16)
    model = ContrastiveModel(ContrastiveConfig.tiny(text=text, lock_text=True, lock_text_unlocked_layers=1)).eval()
    ids, mask = model.tokenize(["a red square", "blue circle moves"])
    assert ids[0].tolist()[:4] == [2, 5, 6, 9]  # [CLS] a red square: the loaded vocabulary is used
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state[:, 0]
        _, pooled = model.text(ids, mask)
    torch.testing.assert_close(pooled, ref)
    assert not model.text.causal  # BERT: bidirectional, so it is given the padding mask
    assert not model.text.model.use_kernels  # loaded without hub kernels (code fetched from the Hub)
    locked = [n for n, p in model.text.named_parameters() if not p.requires_grad]
    assert any("layer.0." in n for n in locked) and not any("layer.1." in n for n in locked)
    # a fully locked tower stays in eval mode during training, so BERT's dropout is off
    full = ContrastiveModel(ContrastiveConfig.tiny(text=text, lock_text=True)).train()
    assert full.training and not full.text.training and full.front_end.tower.training
    torch.testing.assert_close(full.encode_text(["a red square"]), full.encode_text(["a red square"]))


def test_hf_clip_text_tower_needs_no_padding_mask(tmp_path):
    """CLIP's text tower is causal: on right-padded ids it is run without the padding mask (no read of it on the
    device) and its real tokens, and so the pooled end token, are transformers' with the mask."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=0)).eval()  # fmt: skip
    clip.save_pretrained(tmp_path)
    tower = HFTextEncoder(TextConfig(kind="hf", source=str(tmp_path), pooling="eos", context_length=16)).eval()
    assert tower.causal
    ids = torch.tensor([[1, 5, 6, 7, 8, 2], [1, 9, 2, 0, 0, 0]])
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    with torch.no_grad():
        ref = clip(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        tokens, pooled = tower(ids, mask)
        unmasked = clip(input_ids=ids).last_hidden_state
    torch.testing.assert_close(tokens[mask], ref[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref[torch.arange(2), torch.tensor([5, 2])], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, unmasked)  # the mask is left out: the pads are those of the unmasked run,
    assert not torch.allclose(unmasked[1, 3:], ref[1, 3:], atol=1e-3)  # which differ from the masked run's


def test_pretrained_towers_round_trip_without_sources(hf_dirs, tmp_path):
    """A checkpoint restores without the HF directories it was initialised from."""
    root, _, clip = hf_dirs
    src = tmp_path / "src"
    shutil.copytree(root, src)
    text = TextConfig(kind="hf", source=str(src / "bert"), pooling="mean", context_length=16)
    model = ContrastiveModel(tiny_config(vision_source=str(src / "clip"), text=text, loss="siglip")).eval()
    video = clips(b=2, t=1)
    with torch.no_grad():  # at T = 1 the frame embedding is CLIP's pooler_output
        ref = clip(pixel_values=video[:, 0]).pooler_output
        torch.testing.assert_close(model.front_end.tower(video).pooler_output[:, 0], ref, atol=1e-5, rtol=1e-5)
        before = (model.encode_video(video), model.encode_text(CAPTIONS))
    model.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(src)
    restored = load(tmp_path / "ckpt").eval()
    tower = restored.config.front_end.tower
    assert tower.name == "native" and tower.source is None and tower.vision.act == "quick_gelu"
    with torch.no_grad():
        torch.testing.assert_close(restored.encode_video(video), before[0], rtol=0, atol=0)
        torch.testing.assert_close(restored.encode_text(CAPTIONS), before[1], rtol=0, atol=0)


def test_config_is_strict_and_checked():
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(ContrastiveConfig, {"family": "contrastive", "embed_dimm": 3})
    with pytest.raises(ConfigError, match="loss"):
        from_dict(ContrastiveConfig, {"loss": "triplet"})
    with pytest.raises(ConfigError, match="family"):
        ContrastiveConfig(family="coca")
    with pytest.raises(ConfigError, match="captions_per_video"):
        ContrastiveConfig(captions_per_video=0)
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigError, match="hard_negatives"):
            ContrastiveConfig(hard_negatives=bad)


def test_checkpoint_of_another_family_is_refused(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    text = (tmp_path / "config.yaml").read_text().replace("family: contrastive", "family: coca")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="family"):
        ContrastiveModel.from_pretrained(tmp_path)


def test_retrieval_through_the_model_after_a_few_steps():
    """A few optimisation steps on 4 pairs make retrieval with the model's own embeddings perfect."""
    from vidvlm.eval.retrieval import retrieval_metrics

    model = tiny(embed_dim=16)
    video = clips(b=4, t=2, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        model({"video": video, "text": CAPTIONS})["contrastive_loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        m = retrieval_metrics(model.encode_video(video), model.encode_text(CAPTIONS))
    assert m["t2v_R@1"] == 100.0 and m["v2t_R@1"] == 100.0
    assert F.cosine_similarity(model.encode_video(video[:1]), model.encode_text(CAPTIONS[:1])).item() > 0.5


def test_embed_dataset_on_real_video_files(tmp_path):
    """Synthetic mp4 clips -> VideoTextDataset (the model's transform) -> embed_dataset -> retrieval metrics."""
    from vidvlm.data.datasets import VideoTextDataset
    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.data.synthetic import make_synthetic
    from vidvlm.eval.retrieval import embed_dataset, retrieval_metrics

    manifest = make_synthetic(tmp_path, num=3, seed=0, frames=4, size=32)
    model = tiny().eval()
    dataset = VideoTextDataset(manifest, build_sampler(SamplerConfig(name="uniform", num_frames=2)), model.transform)
    emb = embed_dataset(model, dataset, batch_size=2)
    assert emb["video"].shape == (3, 16) and emb["text"].shape == (3, 16)
    assert emb["text_to_video"].tolist() == [0, 1, 2]
    sample = dataset[1]
    with torch.no_grad():
        direct = model.encode_video(sample["video"][None])
    torch.testing.assert_close(emb["video"][1:2], direct, atol=1e-5, rtol=1e-5)
    m = retrieval_metrics(emb["video"], emb["text"], emb["text_to_video"])
    assert 1.0 <= m["t2v_mean_rank"] <= 3.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_cuda_forward_backward_and_reload(loss, tmp_path):
    """On CUDA: tokens follow the model's device, bf16 autocast gives finite losses and grads, checkpoints reload."""
    model = tiny(loss=loss, captions_per_video=2).cuda().train()
    batch = {"video": clips(b=3).cuda(), "frame_mask": torch.ones(3, 3, dtype=torch.bool).cuda(),
             "text": CAPTIONS[:3], "captions": [CAPTIONS[:2], CAPTIONS[2:], CAPTIONS[1:2]]}  # fmt: skip
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(batch)
    out["contrastive_loss"].backward()
    assert torch.isfinite(out["contrastive_loss"]) and model.logit_scale.grad is not None
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    model.save_pretrained(tmp_path)
    restored = load(tmp_path, map_location="cuda").eval()
    assert restored.logit_scale.device.type == "cuda"
    with torch.no_grad():
        torch.testing.assert_close(restored.encode_text(CAPTIONS), model.encode_text(CAPTIONS))
        torch.testing.assert_close(restored.encode_video(batch["video"]), model.encode_video(batch["video"]))
