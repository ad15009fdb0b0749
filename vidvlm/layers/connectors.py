"""Connectors: project pooled vision tokens ``[B, M, Dv]`` into a language model's width ``[B, M, Dt]``.

* ``linear``: one ``nn.Linear`` (LLaVA-1.0, MiniGPT-4).
* ``mlp``: LLaVA-1.5's ``mlp2x_gelu``, ``linear_2(act(linear_1(x)))`` (``depth`` linears in all); parameter names
  match transformers' ``LlavaMultiModalProjector`` so its weights load strictly.
* ``multilevel``: features of several vision-tower layers concatenated along D (``len(layers) * Dv``) and then
  projected by a linear or MLP; transformers' LLaVA does the same when ``vision_feature_layer`` is a list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vidvlm.errors import ConfigError, VidVLMError
from vidvlm.layers.transformer import activation

CONNECTORS = ("none", "linear", "mlp", "multilevel")


class MLPConnector(nn.Module):
    """``depth`` linears with an activation between them: ``[..., in_dim] -> [..., out_dim]``.

    Args:
        in_dim: vision width (times the number of levels for multi-level features).
        out_dim: language-model width; also the hidden width unless ``hidden_dim`` is given (as in LLaVA-1.5).
        hidden_dim: inner width.
        depth: number of linears (LLaVA-1.5: 2).
        act: activation name (see :func:`vidvlm.layers.transformer.activation`).
        bias: bias on every linear.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int | None = None,
        depth: int = 2,
        act: str = "gelu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"connector.depth: must be >= 1, got {depth}")
        hidden = hidden_dim or out_dim
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        self.depth = depth
        for i in range(depth):
            self.add_module(f"linear_{i + 1}", nn.Linear(dims[i], dims[i + 1], bias=bias))
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_dim] -> [..., out_dim]``."""
        for i in range(self.depth):
            x = getattr(self, f"linear_{i + 1}")(x if i == 0 else self.act(x))
        return x


class MultiLevelConnector(nn.Module):
    """Concatenate chosen layers' features along D, then project.

    Args:
        in_dim: width of one level.
        out_dim: output width.
        layers: indices into the vision tower's hidden states (negative counts from the end), in concatenation order.
        projector: ``"mlp"`` or ``"linear"``.
        **mlp: passed to :class:`MLPConnector`.
    """

    def __init__(self, in_dim: int, out_dim: int, layers: Sequence[int] = (-2,), projector: str = "mlp", **mlp) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("connector.layers: multilevel needs at least one layer index")
        self.layers = tuple(int(i) for i in layers)
        cat_dim = in_dim * len(self.layers)
        if projector == "mlp":
            self.proj: nn.Module = MLPConnector(cat_dim, out_dim, **mlp)
        elif projector == "linear" and not mlp:
            self.proj = nn.Linear(cat_dim, out_dim)
        else:
            raise ConfigError(f"connector.projector: {projector!r} (with {sorted(mlp)}) is not 'mlp' or 'linear'")

    def forward(self, hidden_states: Sequence[Tensor] | Tensor) -> Tensor:
        """Project multi-level features.

        Args:
            hidden_states: all of the tower's hidden states, each ``[..., in_dim]`` (a tuple, or a tensor stacked on
                dim 0); ``self.layers`` picks from them. A tensor whose last dim is already ``len(layers) * in_dim``
                (features concatenated by the caller) is projected as is.

        Returns:
            ``[..., out_dim]``.
        """
        if isinstance(hidden_states, Tensor) and hidden_states.shape[-1] == self._cat_dim():
            return self.proj(hidden_states)
        n = len(hidden_states)
        if any(not -n <= i < n for i in self.layers):
            raise VidVLMError(f"multilevel connector: layers {list(self.layers)} out of range for {n} hidden states")
        return self.proj(torch.cat([hidden_states[i] for i in self.layers], dim=-1))

    def _cat_dim(self) -> int:
        first = self.proj.linear_1 if isinstance(self.proj, MLPConnector) else self.proj
        return first.in_features


@dataclass
class ConnectorConfig:
    """Connector choice for a config file (``name`` + its parameters); ``build_connector(cfg, in_dim, out_dim)``
    builds it. ``none`` means no connector (the front-end keeps the tower's width)."""

    name: str = "mlp"
    hidden_dim: int | None = None
    depth: int = 2
    act: str = "gelu"
    layers: list[int] | None = None
    projector: str = "mlp"


def build_connector(kind: str | ConnectorConfig, in_dim: int, out_dim: int, **kwargs) -> nn.Module:
    """Build a connector.

    Args:
        kind: ``"none"``, ``"linear"``, ``"mlp"`` or ``"multilevel"`` (or a :class:`ConnectorConfig`).
        in_dim: vision width (of one level for ``multilevel``).
        out_dim: language-model width.
        **kwargs: ``mlp``: ``hidden_dim``, ``depth``, ``act``, ``bias``; ``multilevel``: ``layers``, ``projector``
            plus the ``mlp`` ones.

    Raises:
        ConfigError: unknown kind or argument.
    """
    if isinstance(kind, ConnectorConfig):
        cfg = kind
        kind, kwargs = cfg.name, {"hidden_dim": cfg.hidden_dim, "depth": cfg.depth, "act": cfg.act}
        if cfg.name == "multilevel":
            kwargs.update(layers=cfg.layers or [-2], projector=cfg.projector)
            if cfg.projector == "linear":
                kwargs = {"layers": kwargs["layers"], "projector": "linear"}
        elif cfg.name in ("linear", "none"):
            kwargs = {}
    try:
        if kind == "none":
            if in_dim != out_dim:
                raise ConfigError(f"connector.name: 'none' needs equal widths, got {in_dim} -> {out_dim}")
            return nn.Identity()
        if kind == "linear":
            return nn.Linear(in_dim, out_dim, **kwargs)
        if kind == "mlp":
            return MLPConnector(in_dim, out_dim, **kwargs)
        if kind == "multilevel":
            return MultiLevelConnector(in_dim, out_dim, **kwargs)
    except TypeError as err:
        raise ConfigError(f"connector: bad arguments {sorted(kwargs)} for {kind!r}: {err}") from err
    raise ConfigError(f"connector.name: unknown connector {kind!r}; expected one of {list(CONNECTORS)}")


__all__ = ["MLPConnector", "MultiLevelConnector", "ConnectorConfig", "build_connector", "CONNECTORS"]
