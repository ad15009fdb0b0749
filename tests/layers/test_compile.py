"""Regional compilation: compiled blocks compute what the eager ones do, and the model keeps its parameter names."""

from __future__ import annotations

import copy

import pytest
import torch

from vidvlm.layers.transformer import TemporalAttention, TransformerBlock, compile_blocks
from vidvlm.models.vision import VideoViT, VisionConfig

pytest.importorskip("torch._inductor")


def test_compiled_video_vit_matches_eager() -> None:
    """A ``divided`` tower (both kinds of region) with trained-like temporal weights, padding and gradient
    checkpointing: inductor's fused blocks give the eager outputs and gradients, under the same state-dict keys."""
    torch.manual_seed(0)
    cfg = VisionConfig(image_size=16, patch_size=8, width=32, depth=2, num_heads=2, layout="divided", num_tubelets=3)
    eager = VideoViT(cfg).train()
    with torch.no_grad():
        for name, p in eager.named_parameters():
            if name.startswith("temporal_attn"):
                p.add_(torch.randn_like(p) * 0.3)
    eager.set_grad_checkpointing(True)
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compile_blocks(compiled) == 4
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    video = torch.randn(2, 3, 3, 16, 16)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    outs = []
    for model in (eager, compiled):
        out = model(video, frame_mask=mask).last_hidden_state
        out.square().mean().backward()
        outs.append(out)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= graphs_before + 2  # both kinds were compiled
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compile_blocks_finds_every_region_and_passes_options() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(0)
    model = torch.nn.ModuleList([TransformerBlock(16, 2), TemporalAttention(16, 2, True, 1e-6), torch.nn.Linear(16, 4)])
    torch._dynamo.reset()
    # compile_blocks raises a process-wide limit: the suite gets its value back whatever happens here
    saved = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 8
    try:
        assert compile_blocks(model, backend=backend) == 2  # the Linear is not a block
        assert torch._dynamo.config.recompile_limit == 64  # room for every kind of block call (see the docstring)
        x = torch.randn(2, 5, 16)
        ref = model[1].forward(model[0].forward(x), None)  # forward() itself is the eager code
        out = model[1](model[0](x), None)
        assert len(graphs) == 2  # one graph per region, each through the given backend
        torch.testing.assert_close(out, ref)
    finally:
        torch._dynamo.config.recompile_limit = saved
