"""Every YAML under configs/ loads strictly; run configs also pass their family's own config check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidvlm.train.config import load_train_config, validate_model_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in RUN_CONFIGS}
    assert {"contrastive_tiny_8f_shapes.yaml", "contrastive_tiny_1f_shapes.yaml"} <= names
    assert {"llava_tiny_8f_shapes.yaml", "llava_smollm2_8f_shapes.yaml", "contrastive_tiny_8f_scenes.yaml"} <= names
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"ddp.yaml", "fsdp.yaml", "deepspeed.yaml"}


@pytest.fixture(scope="module")
def scratch_lm(tmp_path_factory):
    """The tiny recipes' from-scratch LM (tools/prepare_lm.py tiny-shapes writes the same)."""
    from vidvlm.models.scratch_lm import make_scratch_lm

    return make_scratch_lm(tmp_path_factory.mktemp("lms") / "tiny_shapes")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_is_valid(path, request):
    cfg = load_train_config(path)
    model_cfg = validate_model_config(cfg, where=str(path))
    assert model_cfg.family == cfg.model["family"]
    assert cfg.num_steps > 0
    if "tiny" in path.name:  # cheap enough to build: the architecture really exists
        from vidvlm.models.registry import build_model
        from vidvlm.train.optim import check_patterns

        model_cfg = dict(cfg.model)
        if model_cfg["family"] == "llava":  # its LM is a prepared directory: the same one, built here
            model_cfg["lm"] = {**model_cfg["lm"], "source": str(request.getfixturevalue("scratch_lm"))}
        model = build_model(model_cfg)
        check_patterns(model, cfg.stages, cfg.optim.groups)  # every stage selector matches a parameter


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_is_valid(path):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(path)
    assert cfg.num_processes >= 1 and cfg.mixed_precision == "no"
    assert yaml.safe_load(path.read_text())["distributed_type"] == str(cfg.distributed_type).split(".")[-1]
