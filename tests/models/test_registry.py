"""Contract tests over every registered family (families added later are covered automatically), and over every
kind of video front-end for each family that declares one.

Each family's config class provides ``tiny()`` (a minute model); ``prepare_for_training(captions)`` gives it its
tokenizer. What a family can do is read from its declared abilities, never guessed. Inputs go through the family's
own ``transform``, so the test never assumes an image size. ``tests/models/toy_family.py`` registers a toy family
(the one docs/adding_a_family.md walks through): it must pass every test here too.
"""

from __future__ import annotations

import dataclasses
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tests.models.toy_family  # noqa: F401 (registers the toy family)
from tests.models.frontend_kinds import KINDS, make_sources, tower_configs
from tests.models.tiny_lm import make_tiny_lm
from vidvlm.config import to_dict
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.models.base import (
    ABILITIES,
    ANSWER,
    CHAT,
    EMBED_TEXT,
    EMBED_VIDEO,
    FRONT_END,
    GENERATE,
    VISUAL_TOKENS,
    VLMModel,
)
from vidvlm.models.frontend import select_clips
from vidvlm.models.llava import LanguageModelConfig
from vidvlm.models.registry import build_model, get_family, list_families, load, register_family

FAMILIES = list_families()
FRONT_END_FAMILIES = [f for f in FAMILIES if get_family(f).can(FRONT_END)]
CAPTIONS = [
    "a red square moves left",
    "a blue circle moves right",
    "a green triangle bounces",
    "two shapes spin slowly",
]


_LM_DIR: list = []


def _tiny_lm_dir():
    """A tiny random causal LM for families built on a pretrained LM (made once per session)."""
    import tempfile
    from pathlib import Path

    if not _LM_DIR:
        _LM_DIR.append(make_tiny_lm(Path(tempfile.mkdtemp(prefix="vidvlm-lm-"))))
    return _LM_DIR[0]


def tiny_config(family: str):
    """The family's test config: ``config_class.tiny()`` with ``family`` set (one class may serve several); a config
    with a pretrained language model (an ``lm`` section) gets the tiny test LM."""
    cls = get_family(family)
    cfg = cls.config_class.tiny()
    if cfg.family != family:
        cfg = dataclasses.replace(cfg, family=family)
    if isinstance(getattr(cfg, "lm", None), LanguageModelConfig):
        cfg = dataclasses.replace(cfg, lm=dataclasses.replace(cfg.lm, source=str(_tiny_lm_dir())))
    return cfg


def tiny_model(family: str, tower=None) -> VLMModel:
    """The family's tiny model, with its front-end's tower replaced by ``tower`` when given."""
    torch.manual_seed(0)
    cfg = tiny_config(family)
    if tower is not None:
        # multi-level features are token features: a family that pools per-frame embeddings pools tokens instead
        pool_input = "tokens" if tower.layers is not None else cfg.front_end.pool_input
        cfg = dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, tower=tower, pool_input=pool_input))
    model = build_model(cfg)
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
    """Every output the family declares it can give."""
    out = {}
    if model.can(EMBED_VIDEO):
        out["video"] = model.encode_video(batch["video"], batch["frame_mask"])
    if model.can(EMBED_TEXT):
        out["text"] = model.encode_text(batch["text"])
    if model.can(VISUAL_TOKENS):
        out["visual_tokens"] = model.visual_tokens(batch["video"], batch["frame_mask"])[0]
    if model.can(FRONT_END):
        out["front_end"] = model.front_end(batch["video"], batch["frame_mask"]).tokens
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return request.param, tiny_model(request.param)


def test_families_registered():
    assert {"contrastive", "coca", "prefix_lm", "llava", "toy_probe"} <= set(FAMILIES)
    for name in FAMILIES:
        cls = get_family(name)
        assert issubclass(cls, VLMModel) and name in cls.family_names
        assert callable(getattr(cls.config_class, "tiny", None)), f"{name}: config class needs tiny()"
        assert cls.abilities and cls.abilities <= set(ABILITIES), f"{name}: declares {cls.abilities}"


def test_abilities_are_checked_and_refused_by_name():
    # a class declaring an ability it does not implement is refused at registration
    with pytest.raises(TypeError, match="does not implement generate"):

        @register_family("liar")
        class Liar(VLMModel):  # noqa: F841
            abilities = frozenset({GENERATE})

    with pytest.raises(TypeError, match="unknown abilities"):

        @register_family("typo")
        class Typo(VLMModel):  # noqa: F841
            abilities = frozenset({"embed_vidoe"})

    assert "liar" not in list_families() and "typo" not in list_families()
    probe = get_family("toy_probe")
    with pytest.raises(ConfigError, match="family 'toy_probe' cannot answer questions .needed to chat.; it can: "):
        probe.require("answer", "chat")
    probe.require(EMBED_VIDEO)  # declared: no error
    with pytest.raises(ValueError, match="unknown ability"):
        probe.can("fly")


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
    assert emb, f"{name}: declares no output"
    for k in ("video", "text"):
        if k in emb:
            e = emb[k]
            assert e.ndim == 2 and e.shape[0] == 2 and torch.isfinite(e).all(), f"{name}: encode_{k} {tuple(e.shape)}"
    for k in ("visual_tokens", "front_end"):
        if k in emb:
            assert emb[k].ndim == 3 and emb[k].shape[0] == 2 and torch.isfinite(emb[k]).all(), f"{name}: {k}"
    if "video" in emb and "text" in emb:
        assert emb["video"].shape[1] == emb["text"].shape[1]


def test_generate_encodes_each_clip_once_for_several_outputs(family_model):
    """``generate(video, clip_of=idx)`` (the GENERATE contract) answers as ``generate(video[idx])`` does, and the
    front-end's output picked per clip (``select_clips``) is the output for the picked clips."""
    name, model = family_model
    model.eval()
    batch = make_batch(model)
    idx = torch.tensor([1, 0, 1])
    if model.can(FRONT_END):
        with torch.no_grad():
            whole = select_clips(model.front_end(batch["video"], batch["frame_mask"]), idx)
            again = model.front_end(batch["video"][idx], batch["frame_mask"][idx])
        for field in ("tokens", "mask", "frame_index"):
            a, b = getattr(whole, field), getattr(again, field)
            assert (a is None) == (b is None), f"{name}: {field}"
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name}: {field}")
        torch.testing.assert_close(whole.vision.last_hidden_state, again.vision.last_hidden_state, rtol=1e-5, atol=1e-6)
    if not model.can(GENERATE):
        return
    kwargs = {"timestamps": batch["timestamps"]} if model.can(CHAT) else {}
    once = model.generate(batch["video"], batch["frame_mask"], clip_of=idx, **kwargs)
    if kwargs:
        kwargs["timestamps"] = batch["timestamps"][idx]
    each = model.generate(batch["video"][idx], batch["frame_mask"][idx], **kwargs)
    assert len(once) == 3 and once == each, name


def test_answers_questions_says_whether_generate_takes_questions(family_model):
    """``answers_questions()`` is the instance's word on the ANSWER contract: without the ability it is False; with
    it, True means ``generate(..., questions=...)`` answers each question and False means it refuses them by name
    (a captioner trained on captions alone)."""
    name, model = family_model
    model.eval()
    answers = model.answers_questions()
    assert isinstance(answers, bool), name
    if not model.can(ANSWER):
        assert not answers, name
        return
    batch = make_batch(model)
    kwargs = {"timestamps": batch["timestamps"]} if model.can(CHAT) else {}
    questions = ["what colour is the shape?", "where is it going?"]
    if answers:
        out = model.generate(batch["video"], batch["frame_mask"], questions=questions, **kwargs)
        assert len(out) == 2 and all(isinstance(o, str) for o in out), name
    else:
        with pytest.raises(ConfigError, match="question"):
            model.generate(batch["video"], batch["frame_mask"], questions=questions, **kwargs)


@pytest.fixture(scope="module")
def qa_manifest(tmp_path_factory):
    """Three generated 4-frame clips whose manifest rows hold captions and questions of every type."""
    from vidvlm.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("qa"), 3, seed=0, frames=4, size=32, conversations=True)


def test_in_run_evaluation_captions_and_answers_with_every_generating_family(family_model, qa_manifest):
    """``evaluate(..., generation=True)`` (the trainer's ``eval.generation``) captions each clip and, when the model
    answers questions, asks every question of its row; a family that cannot generate is refused by name."""
    from vidvlm.data.collate import collate_video_text
    from vidvlm.data.datasets import VideoTextDataset
    from vidvlm.data.sampling import SamplerConfig, build_sampler
    from vidvlm.train.evaluation import evaluate

    name, model = family_model
    sampler = build_sampler(SamplerConfig(name="uniform", num_frames=model.num_frames))
    data = VideoTextDataset(qa_manifest, sampler, model.transform)
    run = dict(batch_size=2, collate_fn=collate_video_text, retrieval=False, generation=True)
    if not model.can(GENERATE):
        with pytest.raises(ConfigError, match=f"eval.generation: family '{name}' cannot generate text"):
            evaluate(model, data, **run)
        return
    metrics = evaluate(model, data, **run)
    assert metrics["caption_num"] == 3 and 0.0 <= metrics["caption_exact_match"] <= 1.0, name
    assert "loss" in metrics and "caption_cider" in metrics, name
    asked = sum(len(row.extra["qa"]) for row in data.rows)
    if model.answers_questions():
        assert metrics["qa_num"] == asked and "qa_direction_accuracy" in metrics, name
    else:
        assert not any(k.startswith("qa_") for k in metrics), name


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


@pytest.mark.parametrize("family", FRONT_END_FAMILIES)
def test_a_stage_that_names_no_parameters_keeps_a_frozen_tower_frozen(family):
    """``freeze_tower`` holds through a training stage whose ``trainable`` is empty (every parameter the model leaves
    trainable), also after an earlier stage trained the tower by name; a pattern naming the tower trains it."""
    from vidvlm.train.config import StageConfig
    from vidvlm.train.optim import apply_stage_trainable, own_trainable

    cfg = tiny_config(family)
    model = build_model(dataclasses.replace(cfg, front_end=dataclasses.replace(cfg.front_end, freeze_tower=True)))
    model.prepare_for_training(CAPTIONS)
    tower = {id(p) for p in model.front_end.tower.parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in tower}
    assert names and all(n.startswith("front_end.tower.") for n in names)
    own = own_trainable(model)
    assert own and not own & names
    everything = StageConfig(name="all", steps=1)
    for stage in (everything, StageConfig(name="tower", steps=1, trainable=["front_end.tower"]), everything):
        trained = set(apply_stage_trainable(model, stage, default=own))
        assert trained == (names if stage.name == "tower" else own)
        assert model.front_end.tower_frozen == (stage.name != "tower")


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


# -- every family on every kind of front-end tower ------------------------------------------------------------


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    pytest.importorskip("timm")
    return tower_configs(_sources(tmp_path_factory))


def _sources(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "shared_sources"
    root.mkdir(exist_ok=True)
    return make_sources(root)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", FRONT_END_FAMILIES)
def test_family_on_every_front_end(family, kind, towers, tmp_path_factory):
    """Losses and gradients, T = 3 with padding and T = 1, padding invariance, and a checkpoint that restores the
    same model after the pretrained sources are gone."""
    # a private copy of the sources, deleted before loading: the checkpoint must not need them
    src = tmp_path_factory.mktemp("src")
    for p in _sources(tmp_path_factory).iterdir():
        shutil.copytree(p, src / p.name) if p.is_dir() else shutil.copy(p, src / p.name)
    tower = _relocate(towers[kind], src)
    model = tiny_model(family, tower)
    batch = make_batch(model, num_frames=3)
    model.train()
    random.seed(0)
    losses = {k: v for k, v in model(batch).items() if k.endswith("_loss")}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.front_end.parameters())
    model.eval()
    with torch.no_grad():
        full = _embeddings(model, batch)
        image = _embeddings(model, make_batch(model, num_frames=1))
        # the padded clip (its last frame is padding) equals the same clip without that frame
        short = {k: v[1:, :2] if k == "video" else v for k, v in batch.items() if k in ("video", "text")}
        short["frame_mask"] = torch.ones(1, 2, dtype=torch.bool)
        short["text"] = batch["text"][1:]
        alone = _embeddings(model, short)
    for k in ("video",):
        if k in full:
            torch.testing.assert_close(full[k][1:], alone[k], atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(v).all() for v in image.values())
    ckpt = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(ckpt)
    keep = tmp_path_factory.mktemp("kept")
    shutil.move(src, keep / "src")
    if _names_a_base(ckpt):  # a family that stores only what it trained refuses, naming the missing base
        with pytest.raises(CheckpointError, match="does not exist"):
            load(ckpt)
        shutil.move(keep / "src", src)
    restored = load(ckpt).eval()
    with torch.no_grad():
        again = _embeddings(restored, batch)
    for k, v in full.items():
        torch.testing.assert_close(again[k], v, rtol=0, atol=0)


def _names_a_base(ckpt) -> bool:
    """Whether the checkpoint names a pretrained tower by hash instead of storing it."""
    import yaml

    def named(tower: dict) -> bool:
        return bool(tower.get("sha256")) or any(named(m) for m in tower.get("members", []))

    front_end = yaml.safe_load((ckpt / "config.yaml").read_text()).get("front_end", {})
    return named(front_end.get("tower", {}))


def _relocate(tower, src):
    """The tower config with its sources moved under ``src``."""
    from pathlib import Path

    def move(path):
        return path if path is None or path.startswith("timm:") else str(src / Path(path).name)

    members = [_relocate(m, src) for m in tower.members]
    return dataclasses.replace(tower, source=move(tower.source), weights=move(tower.weights), members=members)
