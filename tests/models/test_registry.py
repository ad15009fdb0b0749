"""Contract tests over every registered family (families added later are covered automatically).

Each family's config class provides ``tiny()`` (a minute model); a family that trains its tokenizer on captions
exposes ``prepare_for_training(captions)``. Inputs go through the family's own ``transform``, so the test never
assumes an image size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidvlm.config import to_dict
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.base import VLMModel
from vidvlm.models.registry import build_model, get_family, list_families, load, register_family

FAMILIES = list_families()
CAPTIONS = [
    "a red square moves left",
    "a blue circle moves right",
    "a green triangle bounces",
    "two shapes spin slowly",
]


def tiny_config(family: str):
    """The family's test config: ``config_class.tiny()`` with ``family`` set (one class may serve several)."""
    cls = get_family(family)
    cfg = cls.config_class.tiny()
    if cfg.family != family:
        cfg = dataclasses.replace(cfg, family=family)
    return cfg


def tiny_model(family: str) -> VLMModel:
    torch.manual_seed(0)
    model = build_model(tiny_config(family))
    if hasattr(model, "prepare_for_training"):
        model.prepare_for_training(CAPTIONS)
    return model


def make_batch(model: VLMModel, num_frames: int = 3, pad_last: bool = True) -> dict:
    """A collated batch (the ``collate_video_text`` contract) of 2 random clips through ``model.transform``."""
    g = torch.Generator().manual_seed(1)
    clips = [model.transform(torch.randint(0, 256, (num_frames, 3, 40, 50), dtype=torch.uint8, generator=g))
             for _ in range(2)]  # fmt: skip
    video = torch.stack(clips)
    frame_mask = torch.ones(2, num_frames, dtype=torch.bool)
    if pad_last and num_frames > 1:
        video[1, -1] = 0
        frame_mask[1, -1] = False
    return {
        "video": video,
        "frame_mask": frame_mask,
        "text": [CAPTIONS[0], CAPTIONS[1]],
        "captions": [[CAPTIONS[0], CAPTIONS[2]], [CAPTIONS[1]]],
        "label": torch.tensor([0, 1]),
        "index": torch.tensor([0, 1]),
        "path": ["a.mp4", "b.mp4"],
        "timestamps": torch.arange(num_frames, dtype=torch.float32).repeat(2, 1),
    }


def _embeddings(model: VLMModel, batch: dict) -> dict[str, torch.Tensor]:
    out = {}
    with contextlib.suppress(NotImplementedError):  # a family may lack one of the two embeddings
        out["video"] = model.encode_video(batch["video"], batch["frame_mask"])
    with contextlib.suppress(NotImplementedError):
        out["text"] = model.encode_text(batch["text"])
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def test_families_registered():
    assert "contrastive" in FAMILIES
    for name in FAMILIES:
        cls = get_family(name)
        assert issubclass(cls, VLMModel) and name in cls.family_names
        assert callable(getattr(cls.config_class, "tiny", None)), f"{name}: config class needs tiny()"


def test_forward_losses(family_model):
    name, model = family_model
    model.train()
    random.seed(0)
    out = model(make_batch(model))
    losses = {k: v for k, v in out.items() if k.endswith("_loss")}
    assert losses, f"{name}: forward returned no *_loss key: {sorted(out)}"
    for k, v in losses.items():
        assert v.ndim == 0 and torch.isfinite(v), f"{name}: {k} = {v}"
    model.zero_grad()
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("num_frames", [3, 1])
def test_encoders(family_model, num_frames):
    """``encode_video [B, D]`` / ``encode_text [B, D]`` where the family has them; T = 1 (an image) works."""
    name, model = family_model
    model.eval()
    batch = make_batch(model, num_frames=num_frames)
    with torch.no_grad():
        emb = _embeddings(model, batch)
        if num_frames == 1:
            out = model(batch)
            assert all(torch.isfinite(v) for k, v in out.items() if k.endswith("_loss"))
    assert emb, f"{name}: neither encode_video nor encode_text"
    for k, e in emb.items():
        assert e.ndim == 2 and e.shape[0] == 2 and torch.isfinite(e).all(), f"{name}: encode_{k} {tuple(e.shape)}"
    if len(emb) == 2:
        assert emb["video"].shape[1] == emb["text"].shape[1]


def test_save_load_round_trip(family_model, tmp_path):
    name, model = family_model
    model.eval()
    batch = make_batch(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    restored = load(tmp_path)
    assert type(restored) is type(model) and restored.config.family == name
    restored.eval()
    with torch.no_grad():
        a, b = _embeddings(model, batch), _embeddings(restored, batch)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        random.seed(0)
        torch.manual_seed(0)
        la = model(batch)
        random.seed(0)
        torch.manual_seed(0)
        lb = restored(batch)
    for k, v in la.items():
        if k.endswith("_loss"):
            torch.testing.assert_close(v, lb[k], rtol=0, atol=0)


def test_strict_loading(family_model, tmp_path):
    name, model = family_model
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(str(weights))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(weights))
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load(tmp_path)
    assert dropped in str(err.value)
    save_file({**tensors, "extra.weight": torch.zeros(2)}, str(weights))
    with pytest.raises(CheckpointError, match="extra.weight"):
        load(tmp_path)


def test_build_from_mapping(family_model):
    name, model = family_model
    data = to_dict(tiny_config(name))
    rebuilt = build_model(data)
    assert type(rebuilt) is type(model)
    with pytest.raises(ConfigError, match="unknown key"):
        build_model({**data, "no_such_key": 1})


def test_registry_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown model family"):
        build_model({"family": "no-such-family"})
    with pytest.raises(ConfigError, match="family"):
        build_model({"embed_dim": 3})
    with pytest.raises(CheckpointError, match="config.yaml"):
        load(tmp_path)
    (tmp_path / "config.yaml").write_text("family: no-such-family\n")
    with pytest.raises(CheckpointError, match="unknown model family"):
        load(tmp_path)
    with pytest.raises(ValueError, match="already registered"):

        @register_family("contrastive")
        class Other(VLMModel):  # noqa: F841
            pass
