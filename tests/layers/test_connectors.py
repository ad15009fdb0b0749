"""Connectors: LLaVA-1.5 MLP and multi-level features against transformers' LlavaMultiModalProjector."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from vidvlm.config import from_dict
from vidvlm.errors import ConfigError, VidVLMError
from vidvlm.layers.connectors import ConnectorConfig, MLPConnector, MultiLevelConnector, build_connector

DV, DT = 12, 20


def _hf_projector(feature_layer):
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=DV, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2
        ),
        text_config=LlamaConfig(hidden_size=DT, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2),
        vision_feature_layer=feature_layer,
        projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    return LlavaMultiModalProjector(cfg).eval()


def test_mlp_matches_hf_llava_projector_and_loads_its_weights_strictly():
    hf = _hf_projector(-2)
    ours = build_connector("mlp", DV, DT)
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(2, 7, DV)
    torch.testing.assert_close(ours(x), hf(x))


def test_multilevel_matches_hf_llava_with_a_list_of_feature_layers():
    layers = [-2, -5, 1]
    hf = _hf_projector(layers)
    ours = build_connector("multilevel", DV, DT, layers=layers)
    ours.proj.load_state_dict(hf.state_dict(), strict=True)
    hidden = tuple(torch.randn(2, 3, 5, DV) for _ in range(7))  # [B, T, N, D] from 7 hidden states
    expect = hf(torch.cat([hidden[i] for i in layers], dim=-1))
    torch.testing.assert_close(ours(hidden), expect)
    torch.testing.assert_close(ours(torch.stack(hidden)), expect)
    torch.testing.assert_close(ours(torch.cat([hidden[i] for i in layers], -1)), expect)  # already concatenated
    with pytest.raises(VidVLMError, match="out of range"):
        ours(hidden[:3])


def test_linear_and_deeper_mlp():
    lin = build_connector("linear", DV, DT)  # LLaVA-1.0: one projection with a bias
    assert type(lin) is torch.nn.Linear and (lin.in_features, lin.out_features) == (DV, DT) and lin.bias is not None
    x = torch.randn(4, DV)
    deep = build_connector("mlp", DV, DT, depth=3, hidden_dim=8, act="relu")
    assert isinstance(deep, MLPConnector) and deep.linear_2.weight.shape == (8, 8)
    expect = deep.linear_3(torch.relu(deep.linear_2(torch.relu(deep.linear_1(x)))))
    torch.testing.assert_close(deep(x), expect)
    ml = build_connector("multilevel", DV, DT, layers=[0, 1], projector="linear")
    assert isinstance(ml, MultiLevelConnector) and ml.proj.in_features == 2 * DV


def test_config_and_errors():
    cfg = from_dict(ConnectorConfig, {"name": "multilevel", "layers": [-1, -2]}, where="model.connector")
    conn = build_connector(cfg, DV, DT)
    assert conn.layers == (-1, -2) and conn.proj.linear_1.in_features == 2 * DV
    assert isinstance(build_connector(ConnectorConfig(name="linear"), DV, DT), torch.nn.Linear)
    with pytest.raises(ConfigError, match="connector.name"):
        build_connector("qformer", DV, DT)
    assert isinstance(build_connector(ConnectorConfig(name="none"), DV, DV), torch.nn.Identity)
    with pytest.raises(ConfigError, match="equal widths"):
        build_connector("none", DV, DT)
    with pytest.raises(ConfigError, match="bad arguments"):
        build_connector("mlp", DV, DT, width=3)
    with pytest.raises(ConfigError, match="act"):
        build_connector("mlp", DV, DT, act="swish2")
