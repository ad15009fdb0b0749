"""The video front-end every family sees video through: tower(s) -> pooler -> connector.

    video [B,T,3,H,W] (+ frame_mask [B,T]) ──tower──▶ tokens [B,T',N',Dv] (T' = time steps: tubelets, keyframe)
        ──(multi-level: chosen hidden layers concatenated along D)──▶ ──pooler──▶ [B,M,Dv]
        ──connector──▶ tokens [B,M,D] + mask [B,M] + frame_index [B,M]

One typed config (:class:`FrontEndConfig`) chooses every part the same way, ``name`` + typed parameters:

* the tower (:class:`TowerConfig`): ``native`` (the video ViT built from ``vision``), ``pretrained`` (an HF
  CLIP/SigLIP directory or ``timm:<name>`` converted to a video ViT by ``load_vision_tower``, given a video
  layout), ``framewise`` (any HF or timm vision model run per frame) or ``ensemble`` (several towers, their patch
  tokens aligned to the first tower's grid and concatenated or added along D); each with optional multi-level
  features (``layers``: hidden states concatenated along D);
* the pooler (``vidvlm.layers.pooling``: ``name`` + ``params``) over all tokens or the per-frame embeddings;
* the connector (``vidvlm.layers.connectors``: ``name`` + parameters) to the family's width, or none.

Token dropping (``token_drop``, FLIP / open_clip patch dropout; off by default): in training, a fraction ``ratio``
of every time step's patch tokens is dropped before the tower's blocks (``random``: other positions in every step;
``tube``: the same positions in every step; ``content``: per step, flat and static patches first), through the
video ViT's visible-token path (the visible tokens are gathered, so dropped ones cost nothing). Evaluation sees
every token, unless ``content`` dropping sets ``at_eval``: then every forward in eval mode (evaluation, captioning,
feature extraction) encodes the same share of tokens, chosen by content with ties broken by position, so the model
never meets at inference the flat background it did not train on. It needs a video-ViT tower (``native``,
``pretrained``, ``checkpoint``, also multi-level) and a pooler that does not read the patch grid. A training
stage can set its own ratio (``stages[i].token_drop``, :meth:`VideoFrontEnd.set_token_drop`), e.g. a short
unmasked last stage as FLIP does.

The front-end also owns what the model's input is: frames per clip (``num_frames``, in frames), the input side
(``image_size``) and normalisation (``normalize``). Datasets and samplers inherit them (``vidvlm.train.data``).

A frozen tower (``freeze_tower``, or a training stage that trains no tower parameter) runs under ``no_grad`` in
eval mode, so it builds no autograd graph. A checkpoint stores the resolved tower (``resolved_config``): a
pretrained source becomes the native video ViT it was converted to, and a frame-wise tower keeps its architecture
(``arch``) so it is rebuilt without reading its source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from vidvlm.data.transforms import NORMALIZE_PRESETS, build_transform
from vidvlm.devices import to_device
from vidvlm.errors import CheckpointError, ConfigError
from vidvlm.layers.connectors import ConnectorConfig, build_connector
from vidvlm.layers.masking import DROP_KINDS, DropKind, content_keep, content_scores, make_keep
from vidvlm.layers.pooling import PoolerConfig, build_pooler
from vidvlm.models.base import FRONT_END
from vidvlm.models.vision import VIDEO_FIELDS, VideoViT, VisionConfig, VisionOutput, fill_to_tubelets

TOWERS = ("native", "pretrained", "framewise", "checkpoint", "ensemble")
GRID_POOLERS = ("adaptive3d", "spatial2d", "slowfast")  # poolers that read the full patch grid


@dataclass
class TokenDropConfig:
    """Token dropping in training (see the module docstring).

    Attributes:
        ratio: fraction of each time step's patch tokens dropped, in ``[0, 1)``; 0 = off.
        kind: ``random`` (independent positions per time step, FLIP), ``tube`` (the same positions in every step) or
            ``content`` (per step, the tokens that change most from the neighbouring frames or vary most within
            the patch: :func:`vidvlm.layers.masking.content_scores`; flat, static background is dropped first).
            The ``divided`` and ``factorised`` layouts attend over time between the k-th visible tokens of the
            steps, which are one position only with ``tube``: use ``tube`` with them.
        random_share: with ``content``, the fraction of the kept tokens drawn at random from those outside the top
            scores (0: the top ones only), so that the model also sees the background it meets at evaluation.
        at_eval: with ``content``, also select tokens in eval mode (the top ``1 - ratio`` of each step by content,
            ties by position: deterministic, whatever the batch), so training and inference see the same kind of
            input and inference is as cheap as a training step. Only the model's own ``front_end.token_drop``
            takes it (a checkpoint must say how it is evaluated), not a training stage's.
    """

    ratio: float = 0.0
    kind: DropKind = "random"
    random_share: float = 0.0
    at_eval: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"front_end.token_drop.ratio: must lie in [0, 1), got {self.ratio}")
        if self.kind not in DROP_KINDS:
            raise ConfigError(f"front_end.token_drop.kind: expected one of {list(DROP_KINDS)}, got {self.kind!r}")
        if not 0.0 <= self.random_share <= 1.0:
            raise ConfigError(f"front_end.token_drop.random_share: must lie in [0, 1], got {self.random_share}")
        if self.random_share and self.kind != "content":
            raise ConfigError(f"front_end.token_drop.random_share: only kind 'content' takes it, not {self.kind!r}")
        if self.at_eval and (self.kind != "content" or self.ratio == 0):
            raise ConfigError(
                "front_end.token_drop.at_eval: needs kind 'content' with a ratio above 0 (a random mask would differ "
                f"on every call), got kind {self.kind!r}, ratio {self.ratio}"
            )


@dataclass
class TowerConfig:
    """Which vision tower, by ``name``.

    Attributes:
        name: ``native``, ``pretrained``, ``framewise``, ``checkpoint`` (the tower of a vidvlm checkpoint, e.g. a
            contrastive run's ``final/``) or ``ensemble`` (see the module docstring).
        vision: ``native``: the architecture; ``pretrained``: only its video fields (``VIDEO_FIELDS``: layout,
            num_tubelets, tubelet_size, ...) are used, the source fixes the rest.
        source: ``pretrained`` / ``framewise``: a local HF directory or ``timm:<name>``; ``checkpoint``: a vidvlm
            checkpoint directory.
        weights: the weights file of a ``timm:`` source.
        timm_kwargs: ``timm.create_model`` arguments of a ``timm:`` source.
        arch: ``framewise`` only, filled when saved: the HF config (or the resolved timm arguments), so a
            checkpoint rebuilds the tower without reading ``source``.
        members: ``ensemble``: the member towers, the first one's patch grid and time steps are the common ones.
        combine: ``ensemble``: ``concat`` (widths add up) or ``add`` (equal widths).
        input_size: ``ensemble`` members only: the side this member reads; the ensemble's input is resized to it
            (short side, bicubic, antialiased) when it differs, e.g. a 32-px tower beside a 48-px one. None = the
            input as it is.
        frame_stride: ``ensemble`` members only: this member reads every ``frame_stride``-th input frame, e.g. an
            8-frame tower beside a 16-frame one; its time steps are aligned to the first member's (each of those
            takes the coarser member's step that covers its first frame, or the mean of a finer member's steps
            that start in it).
        per_frame: ``ensemble`` members only: this member encodes each frame it reads as a clip of one frame (an
            image: a static tubelet), so it gives one time step per frame whatever its tubelet size, e.g. a
            per-frame (fast) stream of a video tower beside the same tower's tubelet (motion) stream.
        layers: multi-level features: indices of hidden states (negative from the end) concatenated along D
            instead of the last layer's tokens; None = the tower's output tokens.
        sha256: the content hash of the source's weights; when set, a source with other weights is refused (a
            checkpoint that did not store the tower names it this way).
    """

    name: Literal["native", "pretrained", "framewise", "checkpoint", "ensemble"] = "native"
    vision: VisionConfig = field(default_factory=VisionConfig)
    source: str | None = None
    weights: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    arch: dict[str, Any] | None = None
    members: list[TowerConfig] = field(default_factory=list)
    combine: Literal["concat", "add"] = "concat"
    layers: list[int] | None = None
    sha256: str | None = None
    input_size: int | None = None
    frame_stride: int = 1
    per_frame: bool = False

    def __post_init__(self) -> None:
        if self.name not in TOWERS:
            raise ConfigError(f"tower.name: {self.name!r} is not one of {list(TOWERS)}")
        if self.name in ("pretrained", "framewise", "checkpoint") and self.source is None and self.arch is None:
            raise ConfigError(f"tower.source: a {self.name!r} tower needs a source (HF directory or 'timm:<name>')")
        if self.name == "ensemble" and len(self.members) < 2:
            raise ConfigError("tower.members: an ensemble needs at least two towers")
        if self.layers is not None and not self.layers:
            raise ConfigError("tower.layers: give at least one hidden-state index, or null for the last layer")
        if self.input_size is not None and self.input_size < 1:
            raise ConfigError(f"tower.input_size: must be >= 1, got {self.input_size}")
        if self.frame_stride < 1:
            raise ConfigError(f"tower.frame_stride: must be >= 1, got {self.frame_stride}")

    @property
    def reads_own_input(self) -> bool:
        """Whether this tower sets its own input (``input_size`` / ``frame_stride`` / ``per_frame``: ensemble
        members only)."""
        return self.input_size is not None or self.frame_stride != 1 or self.per_frame


@dataclass
class FrontEndConfig:
    """The video front-end of a family.

    Attributes:
        tower: the vision tower (:class:`TowerConfig`).
        pool_input: ``tokens`` pools every token ``[B, T', N', D]``; ``frame`` pools the per-frame embeddings
            (the tower's ``pooler_output`` as ``[B, T', 1, D]``).
        pooler: the pooler (``name`` + ``params``).
        connector: the connector to the family's width (``name: none`` keeps the tower width).
        freeze_tower: freeze the tower (it then runs under ``no_grad``, in eval mode).
        num_frames: frames per clip the model is built for (frames, not tubelets); samplers draw this many.
        image_size: input side of the transforms (None: the tower's training resolution).
        normalize: normalisation preset (``clip``, ``siglip``, ``imagenet``, ``none``).
        token_drop: token dropping in training (:class:`TokenDropConfig`; off by default).
    """

    tower: TowerConfig = field(default_factory=TowerConfig)
    pool_input: Literal["tokens", "frame"] = "tokens"
    pooler: PoolerConfig = field(default_factory=PoolerConfig)
    connector: ConnectorConfig = field(default_factory=lambda: ConnectorConfig(name="none"))
    freeze_tower: bool = False
    num_frames: int = 8
    image_size: int | None = None
    normalize: str = "clip"
    token_drop: TokenDropConfig = field(default_factory=TokenDropConfig)

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ConfigError(f"front_end.num_frames: must be >= 1, got {self.num_frames}")
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"front_end.image_size: must be >= 1, got {self.image_size}")
        if self.normalize not in NORMALIZE_PRESETS:
            raise ConfigError(f"front_end.normalize: {self.normalize!r} is not one of {sorted(NORMALIZE_PRESETS)}")
        if self.tower.reads_own_input:
            raise ConfigError(
                "front_end.tower: input_size / frame_stride / per_frame belong to ensemble members; the "
                "front-end's own input is front_end.image_size and front_end.num_frames"
            )
        if self.tower.layers is not None and self.pool_input == "frame":
            raise ConfigError(
                "front_end.pool_input: 'frame' pools the per-frame embeddings, which have one level; multi-level "
                "features (front_end.tower.layers) need pool_input: tokens"
            )
        _check_drop_pooler(self, self.token_drop, "front_end.token_drop")


def _check_drop_pooler(cfg: FrontEndConfig, drop: TokenDropConfig, where: str) -> None:
    if drop.ratio > 0 and cfg.pool_input == "tokens" and cfg.pooler.name in GRID_POOLERS:
        raise ConfigError(
            f"{where}: pooler {cfg.pooler.name!r} reads the full patch grid; use another pooler, "
            "pool_input: frame, or ratio 0"
        )


@dataclass
class FrontEndOutput:
    """What a family receives.

    Attributes:
        tokens: ``[B, M, D]`` visual tokens (after the connector).
        mask: bool ``[B, M]``, True for real tokens (tokens of padded frames are False); None when all are real.
        frame_index: long ``[B, M]`` on the host, the input frame each token comes from (the first frame of its
            tubelet or pooling cell), -1 for tokens that mix every frame (e.g. a mean over time). With the clip's
            ``timestamps [B, T]`` this gives each token's time (:func:`token_times`). It is layout, which families
            read on the host (LLaVA's frame times), so it is made there: no read of the device.
        vision: the tower's output (``last_hidden_state [B, T', N', Dv]``, ``pooler_output [B, T', Dv]``).
        host_mask: ``mask`` on the host, when the frame mask came on the host (as the trainer gives it), else None:
            layout too (LLaVA lays out its sequences with it), so it is made there and ``mask`` is its copy.
    """

    tokens: torch.Tensor
    mask: torch.Tensor | None
    frame_index: torch.Tensor
    vision: VisionOutput
    host_mask: torch.Tensor | None = None


def select_clips(out: FrontEndOutput, index: torch.Tensor) -> FrontEndOutput:
    """The output for clips ``index`` (long ``[B']``, repeats allowed) of a batch's ``[B, ...]`` output: what the
    front-end would give for ``video[index]``, without running it again."""

    def pick(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[index]

    host_index = index.to(out.frame_index.device)  # layout is indexed on the host: the index is read there

    def pick_host(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x[host_index]

    vision = out.vision
    if vision is not None:
        hidden = None if vision.hidden_states is None else tuple(h[index] for h in vision.hidden_states)
        vision = VisionOutput(
            pick(vision.last_hidden_state), pick(vision.pooler_output), hidden, pick(vision.frame_mask),
            pick_host(vision.host_frame_mask),
        )  # fmt: skip
    tokens, mask, frame_index = out.tokens[index], pick(out.mask), pick_host(out.frame_index)
    return FrontEndOutput(tokens, mask, frame_index, vision, pick_host(out.host_mask))


def token_times(frame_index: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
    """Seconds of each visual token: ``frame_index`` long ``[B, M]``, ``timestamps [B, T]`` -> ``[B, M]`` (NaN where
    the token mixes every frame)."""
    idx = frame_index.clamp(min=0, max=timestamps.shape[1] - 1)
    times = torch.gather(timestamps.to(torch.float32), 1, idx)
    return torch.where(frame_index >= 0, times, torch.full_like(times, float("nan")))


class MultiLevelTower(nn.Module):
    """A tower whose tokens are chosen hidden states concatenated along D: ``[B, T', N', len(layers) * D]``.

    ``pooler_output`` and ``frame_mask`` are the wrapped tower's.
    """

    def __init__(self, tower: nn.Module, layers: list[int]) -> None:
        super().__init__()
        self.tower, self.layers = tower, [int(i) for i in layers]
        self.width = int(tower.width) * len(self.layers)
        self.num_prefix_tokens = tower.num_prefix_tokens
        self.image_size, self.tubelet_size = tower.image_size, tower.tubelet_size

    def forward(
        self,
        video: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        output_hidden_states: Any = False,
        **visible: torch.Tensor,
    ) -> VisionOutput:
        """``video [B, T, C, H, W]`` -> :class:`VisionOutput` with multi-level tokens (``output_hidden_states``
        asks the wrapped tower for its own hidden states instead). ``visible`` (``keep``) goes to the wrapped
        tower's visible-token path."""
        if output_hidden_states is not False:
            return self.tower(video, frame_mask, output_hidden_states=output_hidden_states, **visible)
        out = self.tower(video, frame_mask, output_hidden_states=self.layers, **visible)
        tokens = torch.cat(list(out.hidden_states), dim=-1)
        return dataclasses.replace(out, last_hidden_state=tokens, hidden_states=None)


def build_tower(cfg: TowerConfig) -> nn.Module:
    """Build a tower. Every tower has ``width``, ``num_prefix_tokens``, ``image_size``, ``tubelet_size`` and
    ``forward(video [B, T, C, H, W], frame_mask=None, output_hidden_states=False) -> VisionOutput``."""
    from vidvlm.models import towers

    if cfg.sha256 is not None and cfg.name != "native" and cfg.arch is None:
        check_source_hash(cfg)
    if cfg.name == "native":
        tower: nn.Module = VideoViT(cfg.vision)
    elif cfg.name == "pretrained":
        video = {k: getattr(cfg.vision, k) for k in VIDEO_FIELDS}
        tower = towers.load_vision_tower(cfg.source, weights=cfg.weights, **video, **cfg.timm_kwargs)
    elif cfg.name == "framewise":
        tower = towers.FrameWiseTower.build(cfg.source, cfg.weights, cfg.timm_kwargs, arch=cfg.arch)
    elif cfg.name == "checkpoint":
        from vidvlm.models.registry import load

        try:
            model = load(cfg.source)
        except CheckpointError as e:  # name the key: the usual cause is a run not trained yet
            raise CheckpointError(f"tower.source: {e} (a vidvlm run's final/ or checkpoint-*)") from e
        model.require(FRONT_END, f"serve as the tower of another model (tower.source {cfg.source})")
        tower = model.front_end.base_tower.eval()
    else:
        members = [build_tower(m) for m in cfg.members]
        inputs = [(m.input_size, m.frame_stride, m.per_frame) for m in cfg.members]
        tower = towers.TowerEnsemble(members, combine=cfg.combine, inputs=inputs)
    if cfg.layers is not None:
        tower = MultiLevelTower(tower, cfg.layers)
    return tower


def resolve_tower_config(cfg: TowerConfig, tower: nn.Module) -> TowerConfig:
    """The config that rebuilds ``tower`` from a checkpoint without its pretrained source."""
    inner = tower.tower if isinstance(tower, MultiLevelTower) else tower
    if cfg.name in ("pretrained", "checkpoint"):
        return dataclasses.replace(
            cfg, name="native", vision=inner.cfg, source=None, weights=None, timm_kwargs={}, sha256=None
        )
    if cfg.name == "framewise":
        return dataclasses.replace(cfg, arch=inner.arch_config(), weights=None)
    if cfg.name == "ensemble":
        members = [resolve_tower_config(c, t) for c, t in zip(cfg.members, inner.towers, strict=True)]
        return dataclasses.replace(cfg, members=members)
    return cfg


def source_sha256(cfg: TowerConfig) -> str:
    """sha256 of a tower source's weight files: a timm weights file, an HF directory's safetensors, or a vidvlm
    checkpoint's ``model.safetensors``."""
    from vidvlm.models.lm import file_sha256, weights_sha256

    if cfg.weights is not None:
        return file_sha256(cfg.weights)
    return weights_sha256(cfg.source)


def pretrained_prefixes(cfg: TowerConfig, prefix: str = "tower.") -> list[str]:
    """Parameter-name prefixes of the pretrained towers in ``cfg`` (ensemble members included), under ``prefix``."""
    inner = prefix + "tower." if cfg.layers is not None else prefix  # a multi-level tower wraps the tower
    if cfg.name == "ensemble":
        return [p for i, m in enumerate(cfg.members) for p in pretrained_prefixes(m, f"{inner}towers.{i}.")]
    return [] if cfg.name == "native" else [inner]


def with_source_hashes(cfg: TowerConfig) -> TowerConfig:
    """``cfg`` with the sha256 of every pretrained tower's source filled in (a checkpoint names its bases so)."""
    if cfg.name == "ensemble":
        return dataclasses.replace(cfg, members=[with_source_hashes(m) for m in cfg.members])
    if cfg.name == "native" or cfg.sha256 is not None:
        return cfg
    return dataclasses.replace(cfg, sha256=source_sha256(cfg))


def check_source_hash(cfg: TowerConfig) -> None:
    """Refuse a tower source that is missing or whose weights are not the ones ``cfg.sha256`` names."""
    where = cfg.weights or cfg.source
    if not Path(str(where)).exists():
        raise CheckpointError(
            f"tower.source: {where} does not exist; the checkpoint did not store this base tower, it names it by path "
            f"and sha256 {cfg.sha256[:16]}..."
        )
    got = source_sha256(cfg)
    if got != cfg.sha256:
        raise CheckpointError(
            f"tower.source: {cfg.weights or cfg.source} has weights sha256 {got[:16]}..., but the checkpoint names "
            f"{cfg.sha256[:16]}... (a different base tower)"
        )


class VideoFrontEnd(nn.Module):
    """``video [B, T, 3, H, W]`` (+ ``frame_mask [B, T]``) -> :class:`FrontEndOutput` (see the module docstring).

    Args:
        cfg: the front-end config.
        out_dim: the family's width for the connector (ignored with ``connector.name: none``).
        tower: an already built tower to use instead of ``cfg.tower`` (such a front-end cannot be saved as a
            config unless ``cfg.tower`` describes it).

    Attributes:
        tower: the vision tower (``width``, ``num_prefix_tokens``; returns :class:`VisionOutput`).
        pooler: the pooler.
        connector: the connector (``nn.Identity`` for ``none``).
        width: the width of the output tokens.
        vision_width: the width of the pooled tokens, before the connector.
    """

    def __init__(self, cfg: FrontEndConfig, out_dim: int | None = None, tower: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tower = build_tower(cfg.tower) if tower is None else tower
        self.vision_width = int(self.tower.width)
        self.pooler = build_pooler(cfg.pooler, self.vision_width)
        if cfg.connector.name == "none":
            self.connector: nn.Module = nn.Identity()
            self.width = self.vision_width
        else:
            if out_dim is None:
                raise ConfigError(f"front_end.connector: {cfg.connector.name!r} needs the family's width")
            self.connector = build_connector(cfg.connector, self.vision_width, out_dim)
            self.width = int(out_dim)
        if cfg.freeze_tower:
            for p in self.tower.parameters():
                p.requires_grad_(False)
        self.set_token_drop(None)  # sets self.token_drop, the ratio training uses now

    def set_token_drop(self, drop: TokenDropConfig | None, where: str = "front_end.token_drop") -> None:
        """Use ``drop`` in training from now on (a training stage's own ratio, e.g. FLIP's unmasked final stage
        with ratio 0); None restores the configured ``cfg.token_drop``. The config itself is not changed."""
        if drop is not None and drop.at_eval:
            raise ConfigError(
                f"{where}: at_eval belongs to the model's own front_end.token_drop (a checkpoint must say how it is "
                "evaluated), not to a training stage"
            )
        drop = self.cfg.token_drop if drop is None else drop
        if drop.ratio > 0 and not self.can_drop_tokens:
            raise ConfigError(
                f"{where}: a {self.cfg.tower.name!r} tower has no visible-token path; use a video-ViT tower "
                "(native, pretrained, checkpoint) or ratio 0"
            )
        _check_drop_pooler(self.cfg, drop, where)
        self.token_drop = drop

    # -- input -------------------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Input side of the transforms."""
        if self.cfg.image_size is not None:
            return self.cfg.image_size
        size = self.tower.image_size
        if size is None:
            raise ConfigError("front_end.image_size: required for this tower (its resolution is not known)")
        return size if isinstance(size, int) else min(size)

    def transform(self, train: bool = False, **augment: Any):
        """uint8 ``[T, 3, H, W]`` -> float ``[T, 3, S, S]`` at the model's size and normalisation (``augment``:
        ``build_transform``'s training keywords)."""
        return build_transform(self.image_size, preset=self.cfg.normalize, train=train, **augment)

    # -- forward -----------------------------------------------------------------------------------------------
    @property
    def base_tower(self) -> nn.Module:
        """The tower itself, under a multi-level wrapper if there is one."""
        return self.tower.tower if isinstance(self.tower, MultiLevelTower) else self.tower

    @property
    def can_drop_tokens(self) -> bool:
        """Whether the tower encodes only chosen visible tokens (``keep``): a video ViT, multi-level or not."""
        return isinstance(self.base_tower, VideoViT)

    def token_grid(self, video: torch.Tensor) -> tuple[int, int]:
        """``(T', N)`` of ``video [B, T, C, H, W]``: the leading dims of a ``keep`` index (video-ViT towers)."""
        return self.base_tower.token_grid(video.shape[1], video.shape[-2], video.shape[-1])

    @property
    def tower_frozen(self) -> bool:
        """True when no tower parameter trains: the tower then runs without autograd, in eval mode."""
        return not any(p.requires_grad for p in self.tower.parameters())

    def train(self, mode: bool = True) -> VideoFrontEnd:
        super().train(mode)
        if self.tower_frozen:
            self.tower.eval()
        return self

    def encode(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> VisionOutput:
        """The tower alone: ``video [B, T, 3, H, W]`` -> :class:`VisionOutput` (no autograd when frozen).

        ``keep`` long ``[B, T', K]`` encodes only those patch tokens of each time step (see
        :meth:`VideoViT.forward <vidvlm.models.vision.VideoViT.forward>`; needs :attr:`can_drop_tokens`).
        """
        visible = {} if keep is None else {"keep": keep}
        if self.tower_frozen:
            with torch.no_grad():
                return self.tower(video, frame_mask, **visible)
        return self.tower(video, frame_mask, **visible)

    def drop_keep(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The visible tokens ``keep [B, T', K]`` that ``token_drop`` leaves of ``video [B, T, 3, H, W]``
        (``frame_mask [B, T]``: padded frames, which ``content`` scores as the tower sees them: repeats of the last
        real frame) in training (the stage's ``token_drop``); in evaluation, the model's own when it sets
        ``at_eval`` (the top tokens by content, ties by position), else None; None with ratio 0."""
        drop = self.token_drop if self.training else self.cfg.token_drop
        if drop.ratio == 0 or not (self.training or drop.at_eval):
            return None
        steps, n = self.token_grid(video)
        if drop.kind != "content":
            return make_keep(video.shape[0], steps, n, drop.ratio, drop.kind, device=video.device)
        vit = self.base_tower
        filled, _ = fill_to_tubelets(video, frame_mask, vit.cfg.tubelet_size)
        with torch.no_grad():
            scores = content_scores(filled, vit.cfg.tubelet_size, vit.cfg.patch_size)
        if scores.shape[1] < steps:  # the keyframe step: scored by where the clip's content lies overall
            scores = torch.cat([scores, scores.mean(1, keepdim=True)], dim=1)
        if not self.training:
            return content_keep(scores, drop.ratio, random_ties=False)
        return content_keep(scores, drop.ratio, drop.random_share)

    def forward(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None = None, keep: torch.Tensor | None = None
    ) -> FrontEndOutput:
        """Visual tokens of a batch of clips.

        Args:
            video: float ``[B, T, 3, H, W]`` after :meth:`transform` (an image is ``T = 1``).
            frame_mask: bool ``[B, T]``, True for real frames (real frames first), None = all real.
            keep: long ``[B, T', K]`` the patch tokens to encode (a masking objective's mask; needs
                :attr:`can_drop_tokens`), or None for ``token_drop``'s own in training (and in evaluation with
                ``at_eval``) and every token otherwise.

        With ``token_drop`` the tower encodes only the visible tokens (fewer tokens per time step).

        Returns:
            :class:`FrontEndOutput` with ``tokens [B, M, D]``, ``mask [B, M]`` or None, ``frame_index [B, M]``.
        """
        out = self.encode(video, frame_mask, self.drop_keep(video, frame_mask) if keep is None else keep)
        if self.cfg.pool_input == "frame":
            tokens = rearrange(out.pooler_output, "b t d -> b t 1 d")
        else:
            tokens = out.last_hidden_state
        steps = tokens.shape[1]
        host_in = self.pooler.lists_frames and out.host_frame_mask is not None
        pooled = self.pooler(tokens, out.host_frame_mask if host_in else out.frame_mask)  # [B, M, Dv]
        mask = host_mask = None
        if out.host_frame_mask is not None:  # the mask came on the host: the token mask is made there, then copied
            host_mask = self.pooler.output_mask(out.host_frame_mask, tokens.shape[2])
            mask = to_device(host_mask, video.device)
        elif out.frame_mask is not None:
            mask = to_device(self.pooler.output_mask(out.frame_mask, tokens.shape[2]), video.device)
        frame_index = self._frame_index(steps, tokens.shape[2], video.shape[0])
        return FrontEndOutput(self.connector(pooled), mask, frame_index, out, host_mask)

    def _frame_index(self, steps: int, num_tokens: int, batch: int) -> torch.Tensor:
        """Input frame of each pooled token, ``[B, M]`` on the host (-1: mixes time; the keyframe step maps to its
        frame)."""
        step = self.pooler.token_steps(steps, num_tokens).cpu()
        frame = torch.where(step >= 0, step * self.tower.tubelet_size, step)
        return frame.expand(batch, -1)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def resolved_config(self) -> FrontEndConfig:
        """The config a checkpoint stores (pretrained sources replaced by what they resolved to)."""
        tower = resolve_tower_config(self.cfg.tower, self.tower)
        return dataclasses.replace(self.cfg, tower=tower, image_size=self.image_size)


__all__ = [
    "select_clips",
    "TowerConfig",
    "TokenDropConfig",
    "FrontEndConfig",
    "FrontEndOutput",
    "VideoFrontEnd",
    "MultiLevelTower",
    "build_tower",
    "token_times",
    "TOWERS",
]
