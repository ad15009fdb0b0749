"""Strict run configs: unknown keys and bad values name the key and the file; overrides; optimiser groups."""

from __future__ import annotations

import pytest
import torch
import yaml
from train_tiny import TinyModel, make_cfg

from vidvlm.errors import ConfigError
from vidvlm.train.config import OptimConfig, ParamGroupSpec, StageConfig, load_train_config, resume_changes
from vidvlm.train.optim import apply_stage_trainable, build_optimizer, lr_factor, matches, own_trainable

BASE = {
    "output_dir": "runs/x",
    "model": {"family": "tiny"},
    "data": {"datasets": {"a": {"manifest": "a.jsonl"}}},
    "stages": [{"name": "s", "steps": 3}],
}


def _write(tmp_path, data, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("patch", "key"),
    [
        ({"learning_rate": 1.0}, "learning_rate"),
        ({"optim": {"lr": 1e-3, "momentum": 0.9}}, "momentum"),
        ({"data": {"datasets": {"a": {"manifest": "a.jsonl", "shuffle": True}}}}, "shuffle"),
        ({"stages": [{"name": "s", "steps": 3, "train": ["head"]}]}, "train"),
    ],
)
def test_unknown_key_names_key_and_file(tmp_path, patch, key):
    path = _write(tmp_path, {**BASE, **patch}, "bad_run.yaml")
    with pytest.raises(ConfigError, match=rf"bad_run\.yaml.*'{key}'"):
        load_train_config(path)


def test_bad_values(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml\.mixed_precision.*'fp8'"):
        load_train_config(_write(tmp_path, {**BASE, "mixed_precision": "fp8"}))
    with pytest.raises(ConfigError, match="data.mixture.b: no such dataset"):
        load_train_config(_write(tmp_path, {**BASE, "data": {**BASE["data"], "mixture": {"b": 1.0}}}))
    with pytest.raises(ConfigError, match="stages: at least one stage"):
        load_train_config(_write(tmp_path, {**BASE, "stages": []}))
    with pytest.raises(ConfigError, match="model.family"):
        load_train_config(_write(tmp_path, {**BASE, "model": {}}))


def test_overrides(tmp_path):
    path = _write(tmp_path, BASE)
    cfg = load_train_config(path, ["optim.lr=0.5", "stages.0.steps=7", "data.batch_size=3", "nonfinite=stop"])
    assert (cfg.optim.lr, cfg.stages[0].steps, cfg.data.batch_size, cfg.nonfinite) == (0.5, 7, 3, "stop")
    with pytest.raises(ConfigError, match=r"run\.yaml.*'lrr'"):
        load_train_config(path, ["optim.lrr=0.5"])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.steps: 'many' matches none of int \| float"):
        load_train_config(path, ["stages.0.steps=many"])


def test_param_groups_and_no_decay(tmp_path):
    model = TinyModel()
    cfg = make_cfg(tmp_path)
    stage = StageConfig(name="s", steps=1, lr=0.1, lr_mult={"encoder": 0.5})
    apply_stage_trainable(model, stage)
    opt = build_optimizer(model, cfg.optim, stage)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in opt.param_groups for n in g["names"]}
    assert by_name["head.weight"] == pytest.approx((0.2, 0.1))  # optim.groups head lr_mult 2
    assert by_name["head.bias"] == pytest.approx((0.2, 0.0))
    assert by_name["encoder.weight"] == pytest.approx((0.05, 0.1))  # stage lr_mult 0.5
    assert by_name["norm.weight"] == pytest.approx((0.1, 0.0))
    frozen = StageConfig(name="f", steps=1, frozen=["encoder"])
    apply_stage_trainable(model, frozen)
    opt = build_optimizer(model, cfg.optim, frozen)
    names = {n for g in opt.param_groups for n in g["names"]}
    assert "encoder.weight" not in names and "head.weight" in names
    assert all(p.requires_grad == (not n.startswith("encoder")) for n, p in model.named_parameters())
    assert isinstance(opt, torch.optim.AdamW)


def test_fused_adamw_matches_the_default_update(tmp_path):
    """``optim.fused: true`` builds torch's fused AdamW; three updates land where the default loop's do."""
    params = {}
    for fused in (None, True):
        cfg = make_cfg(tmp_path, [f"optim.fused={'null' if fused is None else 'true'}"])
        torch.manual_seed(0)
        model = TinyModel()
        stage = StageConfig(name="s", steps=3)
        apply_stage_trainable(model, stage)
        opt = build_optimizer(model, cfg.optim, stage)
        assert opt.defaults["fused"] is fused
        model.eval()  # no dropout: both runs see the same losses
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            batch = {"video": torch.randn(4, 12, generator=g), "label": torch.tensor([0, 1, 2, 3]), "index": None}
            out = model(batch)
            (out["ce_loss"] + out["aux_loss"]).backward()
            opt.step()
            opt.zero_grad()
        params[fused] = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)
    start = list(TinyModel().parameters())
    assert all((a != b).any() for a, b in zip(params[None], start, strict=True))  # the updates moved every tensor
    for a, b in zip(params[None], params[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_schedule_shape():
    f = [lr_factor(s, 10, 2, 0.1) for s in range(11)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert f[10] == pytest.approx(0.1) and all(a >= b for a, b in zip(f[1:], f[2:], strict=False))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-0.1", "optim.lr"),
        ("optim.lr=.nan", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("stages.0.lr=-1.0", "stage 's': lr"),
        ("schedule.warmup_steps=-1", "schedule.warmup_steps"),
        ("stages.0.warmup_steps=-2", "stage 's': warmup_steps"),
        ("checkpoint_every=-1", "checkpoint_every"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.transform={size: 0}", "data.transform.size"),
        ("data.transform={size: [32, -4]}", "data.transform.size"),
        ("data.val_transform={size: 0}", "data.val_transform.size"),
        ("data.max_bad_fraction=1.5", "data.max_bad_fraction"),
    ],
)
def test_bad_training_values_are_one_line_errors_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as e:
        load_train_config(_write(tmp_path, BASE), [override])
    message = str(e.value)
    assert message.startswith(key) or f".{key}" in message, message
    assert "\n" not in message


def test_good_edge_values_are_accepted(tmp_path):
    ok = ["optim.lr=0.0", "schedule.warmup_steps=0", "checkpoint_every=0", "data.transform={size: [32, 48]}"]
    cfg = load_train_config(_write(tmp_path, BASE), ok)
    assert cfg.optim.lr == 0.0 and cfg.data.transform["size"] == [32, 48] and cfg.data.max_bad_fraction == 0.05


def test_patterns_select_by_prefix_or_glob():
    assert matches("head.weight", "head") and not matches("header.weight", "head") and matches("head.weight", "")
    assert matches("blocks.0.attn.lora_A.weight", "*.lora_*") and not matches("blocks.0.attn.qkv.weight", "*.lora_*")
    assert matches("front_end.connector.proj.weight", "front_end.connector.*")
    assert not matches("front_end.connectors.proj.weight", "front_end.connector.*")
    assert matches("blocks.11.mlp.fc1.bias", "blocks.1?")  # a glob naming a module selects what is under it
    assert not matches("blocks.1.mlp.fc1.bias", "blocks.1?")


def test_an_empty_trainable_keeps_what_the_model_froze():
    """A stage with no ``trainable`` trains the parameters the model left trainable, not every parameter."""
    model = TinyModel()
    for p in model.encoder.parameters():
        p.requires_grad_(False)  # as a model freezes its tower when built
    own = own_trainable(model)
    assert own and not any(n.startswith("encoder") for n in own)
    assert set(apply_stage_trainable(model, StageConfig(name="s", steps=1))) == own  # default: as it is now
    picked = apply_stage_trainable(model, StageConfig(name="e", steps=1, trainable=["encoder"]), default=own)
    assert picked == ["encoder.weight", "encoder.bias"] and model.encoder.weight.requires_grad  # named: trained
    again = apply_stage_trainable(model, StageConfig(name="s", steps=1, frozen=["head"]), default=own)
    assert set(again) == {n for n in own if not n.startswith("head")} and not model.encoder.weight.requires_grad


def test_glob_stage_selectors_and_groups(tmp_path):
    model = TinyModel()
    stage = StageConfig(name="s", steps=1, trainable=["*.weight"], frozen=["n*"], lr_mult={"enc*": 0.5})
    trainable = apply_stage_trainable(model, stage)
    assert trainable == ["encoder.weight", "head.weight"]
    optim = OptimConfig(lr=0.1, groups=[ParamGroupSpec(prefix="*.weight", lr_mult=3.0)])
    opt = build_optimizer(model, optim, stage)
    by_name = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert by_name == pytest.approx({"encoder.weight": 0.15, "head.weight": 0.3})
    wrong = [ParamGroupSpec(prefix="vision")]
    with pytest.raises(ConfigError, match=r"stage 's': .*optim\.groups 'vision'"):
        apply_stage_trainable(model, stage, wrong)


def test_resume_changes_names_keys_that_matter(tmp_path):
    from vidvlm.train.config import save_train_config

    cfg = make_cfg(tmp_path)
    save_train_config(cfg, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert resume_changes(saved, cfg) == []
    free = make_cfg(tmp_path / "elsewhere", log_every=7, checkpoint_every=5, eval_every=3, trackers=["tensorboard"])
    assert resume_changes(saved, free) == []
    changed = make_cfg(tmp_path, ["model.width=3", "stages.0.steps=9", "data.batch_size=2"], grad_accum=2)
    assert resume_changes(saved, changed) == [
        "data.batch_size: 4 -> 2",
        "grad_accum: 1 -> 2",
        "model.width: (absent) -> 3",
        "stages.0.steps: 8 -> 9",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seed": 0}, r"data\.synthetic\.sets\.qa: missing 'num'"),
        ({"num": 2, "colour": "red"}, r"data\.synthetic\.sets\.qa: .*'colour'"),
        ({"num": 2, "qa_per_shape": ["color"]}, r"data\.synthetic\.sets\.qa: qa_per_shape: needs conversations"),
        ({"num": 2, "split": "dev"}, r"data\.synthetic\.sets\.qa: split: 'dev'"),
    ],
)
def test_generator_errors_name_the_synthetic_set(tmp_path, options, message):
    from vidvlm.train.data import ensure_synthetic

    data = {**BASE["data"], "synthetic": {"out_dir": str(tmp_path / "gen"), "sets": {"qa": options}}}
    cfg = load_train_config(_write(tmp_path, {**BASE, "data": data}))
    with pytest.raises(ConfigError, match=message):
        ensure_synthetic(cfg)
    assert not (tmp_path / "gen" / "qa" / "manifest.jsonl").exists()
