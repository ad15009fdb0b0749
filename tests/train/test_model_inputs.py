"""The model owns frames per clip, input size and normalisation; the data config inherits them or contradicts them
with an error that names both keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidvlm.errors import ConfigError
from vidvlm.models.registry import build_model
from vidvlm.train.config import load_train_config
from vidvlm.train.data import ModelInputs, inherit_inputs

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "contrastive_tiny_8f_shapes.yaml"


def test_data_inherits_the_models_inputs():
    cfg = load_train_config(CONFIG)
    assert "num_frames" not in cfg.data.sampler and "size" not in cfg.data.transform
    inputs = ModelInputs.of(build_model(cfg.model))
    assert inputs == ModelInputs(num_frames=8, image_size=32, normalize="clip")
    data = inherit_inputs(cfg, inputs).data
    assert data.sampler["num_frames"] == 8
    assert (data.transform["size"], data.transform["preset"]) == (32, "clip")
    assert data.transform["scale"] == [0.8, 1.0]  # the data's own augmentation stays


@pytest.mark.parametrize(
    "override,keys",
    [
        ("data.sampler.num_frames=4", ("data.sampler.num_frames", "model.front_end.num_frames")),
        ("data.transform.size=64", ("data.transform.size", "model.front_end.image_size")),
        ("data.transform.preset=siglip", ("data.transform.preset", "model.front_end.normalize")),
        ("data.val_transform={size: 16}", ("data.val_transform.size", "model.front_end.image_size")),
    ],
)
def test_a_contradiction_names_both_keys(override, keys):
    cfg = load_train_config(CONFIG, [override])
    with pytest.raises(ConfigError) as err:
        inherit_inputs(cfg, ModelInputs.of(build_model(cfg.model)))
    assert all(k in str(err.value) for k in keys)


def test_a_model_without_front_end_leaves_the_data_config_alone():
    cfg = load_train_config(CONFIG, ["data.sampler.num_frames=3"])
    assert inherit_inputs(cfg, ModelInputs.of(object())) is cfg
