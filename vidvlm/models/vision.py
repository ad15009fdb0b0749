"""The video ViT: an image ViT (CLIP / SigLIP / timm compatible) with four space-time layouts.

Layouts (``VisionConfig.layout``):

* ``frame``: space-only attention per frame (B·T folded into the batch); no temporal parameters besides the
  temporal position table.
* ``divided`` (TimeSformer): in every block a temporal attention over the same token position across frames, then
  the image block's spatial attention. The temporal residual's output projection starts at zero.
* ``joint``: full attention over all ``T'·N`` tokens of a clip; no new parameters.
* ``factorised`` (ViViT model 2): the image encoder per frame, then ``temporal_depth`` blocks over time at each
  token position (so tokens keep their ``[B, T', N, D]`` layout); those blocks start as the identity.

A fresh video model therefore computes the image model exactly, and with ``T = 1`` every layout equals the image
ViT at initialisation (temporal attention over one key returns that key's value, which the zeroed projection
removes). Padded frames (``frame_mask`` False) are never used as keys, so they cannot change valid frames.

Two-rate input (``keyframe_stream``, off by default): with tubelets, one more time step of per-frame (2D) patch
tokens from the clip's middle real frame is appended after the tubelets. A tubelet turns motion into a local
feature but mixes ``tubelet_size`` frames of a moving object into one token; the keyframe keeps that frame's fine
appearance. This is SlowFast's idea (a high-frame-rate and a high-detail pathway) as two token sets in one
encoder. The output then has ``T' + 1`` time steps, the keyframe last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import nn
from torch.utils.checkpoint import checkpoint

from vidvlm.devices import to_device
from vidvlm.errors import ConfigError
from vidvlm.layers.attention import AttnMask
from vidvlm.layers.embeddings import PatchEmbed, SpaceTimePosEmbed
from vidvlm.layers.masking import gather_tokens
from vidvlm.layers.transformer import CrossAttention, Mlp, SelfAttention, TemporalAttention, TransformerBlock

Layout = Literal["frame", "divided", "joint", "factorised"]
POOLS = ("token", "avg", "max", "avgmax", "map", "cls_dist")
# the VisionConfig fields that turn an image ViT into a video one; a pretrained source fixes all the others
VIDEO_FIELDS = (
    "layout", "num_tubelets", "tubelet_size", "tubelet_init", "keyframe_stream", "temporal_depth", "grad_checkpointing",
    "attn_backend",
)  # fmt: skip


@dataclass
class VisionConfig:
    """Architecture of :class:`VideoViT`.

    Attributes:
        image_size: training resolution ``(H, W)`` (an int means square); other sizes interpolate the table.
        patch_size: patch side P.
        in_chans: input channels.
        width: token width D.
        depth: number of (spatial) blocks.
        num_heads: attention heads.
        mlp_dim: MLP hidden width (None = 4·D).
        qkv_bias: bias on qkv projections.
        qk_norm: LayerNorm on each head's queries and keys (timm ``qk_norm``).
        patch_bias: bias on the patch projection (HF CLIP has none).
        act: MLP activation (``gelu``, ``gelu_tanh``, ``quick_gelu``).
        norm_eps: LayerNorm epsilon.
        layer_scale: initial layer-scale value, or None.
        class_token: prepend a learned class token to every frame.
        num_reg_tokens: register tokens after the class token (timm ``reg_tokens``; DeiT's distillation token is one).
        pos_embed_prefix: whether the spatial position table has rows for the prefix tokens.
        pos_resize_antialias: resample the spatial table for other resolutions with antialiased bicubic (timm)
            rather than plain bicubic (HF).
        pre_norm: LayerNorm before the blocks (CLIP's ``pre_layrnorm``, timm ``pre_norm``).
        final_norm: LayerNorm on all output tokens (timm ``norm``, SigLIP ``post_layernorm``).
        pool: ``token`` (class token), ``avg`` / ``max`` / ``avgmax`` (mean, maximum, or the average of the two over
            patch tokens, as timm), ``map`` (attention-pooling head) or ``cls_dist`` (mean of the class token and
            the first register token: DeiT's distilled models).
        fc_norm: LayerNorm on the pooled vector (timm ``fc_norm``; CLIP's ``post_layernorm``).
        pool_mlp_dim: MLP width of the ``map`` head (None = ``mlp_dim``).
        layout: space-time layout (see the module docstring).
        num_tubelets: temporal position table length, in output time steps (tubelets; frames when
            ``tubelet_size`` is 1); longer clips resample it.
        tubelet_size: frames per tubelet (1 = per-frame patches).
        tubelet_init: how a 2D kernel is inflated: ``center`` or ``average`` (both exact on static clips).
        keyframe_stream: append per-frame patch tokens of the middle real frame as one more time step (see the
            module docstring; needs ``tubelet_size > 1``).
        temporal_depth: blocks of the temporal encoder (``factorised`` only).
        grad_checkpointing: recompute each block in the backward pass.
        attn_backend: attention backend for every block (None = the global default).
    """

    image_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int | None = None
    qkv_bias: bool = True
    qk_norm: bool = False
    patch_bias: bool = True
    act: str = "gelu"
    norm_eps: float = 1e-6
    layer_scale: float | None = None
    class_token: bool = True
    num_reg_tokens: int = 0
    pos_embed_prefix: bool = True
    pos_resize_antialias: bool = False
    pre_norm: bool = False
    final_norm: bool = True
    pool: Literal["token", "avg", "max", "avgmax", "map", "cls_dist"] = "token"
    fc_norm: bool = False
    pool_mlp_dim: int | None = None
    layout: Layout = "frame"
    num_tubelets: int = 8
    tubelet_size: int = 1
    tubelet_init: Literal["center", "average"] = "center"
    keyframe_stream: bool = False
    temporal_depth: int = 4
    grad_checkpointing: bool = False
    attn_backend: str | None = None

    def grid(self) -> tuple[int, int]:
        """The patch grid ``(H/P, W/P)`` at ``image_size``."""
        h, w = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        return h // self.patch_size, w // self.patch_size


def migrate_vision(data: dict) -> dict:
    """A vision config mapping written before ``num_frames`` was renamed ``num_tubelets`` (it always counted
    tubelets), in the current layout."""
    data = dict(data)
    if "num_frames" in data:
        data["num_tubelets"] = data.pop("num_frames")
    return data


@dataclass
class VisionOutput:
    """Output of :class:`VideoViT`.

    Attributes:
        last_hidden_state: ``[B, T', N', D]`` tokens per frame (prefix tokens first); padded frames are zero.
        pooler_output: ``[B, T', D]`` one vector per frame.
        hidden_states: tuple of ``[B, T', N', D]`` (embedding output, then after each block) or None.
        frame_mask: bool ``[B, T']``, True for real output time steps (a tubelet is real when its first frame is);
            None when every step is real. Consumers use it instead of recomputing the tower's time layout. It lies
            with the tokens.
        host_frame_mask: the same mask on the host, when the tower was given its frame mask there (as the trainer
            gives it), else None: layout that a family can read without reading the device (LLaVA's sequences).
    """

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    frame_mask: torch.Tensor | None = None
    host_frame_mask: torch.Tensor | None = None


class AttentionPoolHead(nn.Module):
    """Multi-head attention pooling with a learned probe (SigLIP head / timm ``AttentionPoolLatent``).

    ``h = proj(attn(probe, x)); h = h + mlp(norm(h))``; returns ``h`` for the single probe.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, act: str, norm_eps: float, qkv_bias: bool) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.attn = CrossAttention(dim, num_heads, qkv_bias)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D] -> [B, D]``."""
        h = self.attn(self.probe.expand(x.shape[0], -1, -1), x)
        return (h + self.mlp(self.norm(h)))[:, 0]


class VideoViT(nn.Module):
    """Video ViT over ``[B, T, 3, H, W]`` (see the module docstring for the layouts).

    Attributes:
        width: token width D.
        num_prefix_tokens: class + register tokens at the start of every frame.
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        if cfg.layout not in ("frame", "divided", "joint", "factorised"):
            raise ConfigError(f"layout: expected frame, divided, joint or factorised, got {cfg.layout!r}")
        if cfg.pool not in POOLS:
            raise ConfigError(f"pool: expected one of {POOLS}, got {cfg.pool!r}")
        if cfg.pool in ("token", "cls_dist") and not cfg.class_token:
            raise ConfigError(f"pool: {cfg.pool!r} needs class_token=True (use 'avg' or 'map')")
        if cfg.pool == "cls_dist" and cfg.num_reg_tokens < 1:
            raise ConfigError("pool: 'cls_dist' needs a distillation token (num_reg_tokens >= 1)")
        if cfg.keyframe_stream and cfg.tubelet_size < 2:
            raise ConfigError("keyframe_stream: needs tubelet_size > 1 (with 2D patches every frame is a keyframe)")
        self.cfg = cfg
        d = cfg.width
        mlp_dim = cfg.mlp_dim or 4 * d
        self.width = d
        self.num_prefix_tokens = int(cfg.class_token) + cfg.num_reg_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d, cfg.tubelet_size, cfg.patch_bias)
        self.keyframe_embed = None
        self.keyframe_time = None
        if cfg.keyframe_stream:
            self.keyframe_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d, 1, cfg.patch_bias)
            self.keyframe_time = nn.Parameter(torch.zeros(d))  # the keyframe's row of the temporal embedding
        self.cls_token = nn.Parameter(torch.zeros(1, d)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(cfg.num_reg_tokens, d)) if cfg.num_reg_tokens else None
        n_pos_prefix = self.num_prefix_tokens if cfg.pos_embed_prefix else 0
        self.pos_embed = SpaceTimePosEmbed(d, cfg.grid(), cfg.num_tubelets, n_pos_prefix, cfg.pos_resize_antialias)
        self.norm_pre = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()

        def block() -> TransformerBlock:
            return TransformerBlock(
                d, cfg.num_heads, qkv_bias=cfg.qkv_bias, norm_eps=cfg.norm_eps, act=cfg.act,
                ls_init=cfg.layer_scale, mlp_dim=mlp_dim, qk_norm=cfg.qk_norm,
            )  # fmt: skip

        self.blocks = nn.ModuleList(block() for _ in range(cfg.depth))
        self.temporal_attn = None
        self.temporal_blocks = None
        if cfg.layout == "divided":
            self.temporal_attn = nn.ModuleList(
                TemporalAttention(d, cfg.num_heads, cfg.qkv_bias, cfg.norm_eps, cfg.qk_norm) for _ in range(cfg.depth)
            )
        elif cfg.layout == "factorised":
            self.temporal_blocks = nn.ModuleList(block() for _ in range(cfg.temporal_depth))
            for blk in self.temporal_blocks:
                blk.zero_init_residual()
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.final_norm else nn.Identity()
        self.attn_pool = None
        if cfg.pool == "map":
            pool_mlp = cfg.pool_mlp_dim or mlp_dim
            self.attn_pool = AttentionPoolHead(d, cfg.num_heads, pool_mlp, cfg.act, cfg.norm_eps, cfg.qkv_bias)
        self.fc_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.fc_norm else nn.Identity()
        self.grad_checkpointing = cfg.grad_checkpointing
        if cfg.attn_backend is not None:
            self.set_attention_backend(cfg.attn_backend)

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The training resolution (side or ``(H, W)``)."""
        return self.cfg.image_size

    @property
    def tubelet_size(self) -> int:
        """Frames per output time step."""
        return self.cfg.tubelet_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block during backward (saves activation memory; outputs and grads are unchanged)."""
        self.grad_checkpointing = enable

    def set_attention_backend(self, backend: str | None) -> None:
        """Use ``backend`` (``auto``/``xformers``/``sdpa``/``math``/None) in every attention of this tower."""
        for m in self.modules():
            if isinstance(m, (SelfAttention, CrossAttention)):
                m.backend = backend

    def _run(self, fn: nn.Module, *args: object) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def embed(
        self, video: torch.Tensor, frame_mask: torch.Tensor | None, host_steps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch-embed and add positions: ``video [B, T, C, H, W]`` -> tokens ``[B, T', N', D]``, output mask.
        ``host_steps``: :meth:`step_mask` of the same frame mask, on the host, where one is at hand (the clips'
        lengths are then read there)."""
        ts = self.cfg.tubelet_size
        keyframe = _middle_frame(video, frame_mask) if self.keyframe_embed is not None else None
        if ts > 1:
            video, frame_mask = fill_to_tubelets(video, frame_mask, ts)
        x, grid = self.patch_embed(video)
        b, t = x.shape[:2]
        time = rearrange(self._temporal_rows(b, t, frame_mask, host_steps).to(x.dtype), "b t d -> b t 1 d")
        x = self._add_spatial(x, grid) + time
        if keyframe is not None:
            k, grid = self.keyframe_embed(rearrange(keyframe, "b c h w -> b 1 c h w"))
            k = self._add_spatial(k, grid) + self.keyframe_time.to(k.dtype)
            x = torch.cat([x, k], dim=1)
            if frame_mask is not None:
                frame_mask = torch.cat([frame_mask, frame_mask.new_ones(b, 1)], dim=1)
        return self.norm_pre(x), frame_mask

    def _add_spatial(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Add spatial positions to patch tokens ``[B, T, N, D]`` and prepend the prefix tokens -> ``[B, T, N', D]``."""
        b, t = x.shape[:2]
        prefix_pos, patch_pos = self.pos_embed.spatial_table(grid)
        x = x + patch_pos.to(x.dtype)
        prefix = [p for p in (self.cls_token, self.reg_token) if p is not None]
        if prefix:
            pre = torch.cat(prefix, 0).to(x.dtype)
            if self.pos_embed.num_prefix:
                pre = pre + prefix_pos.to(x.dtype)
            x = torch.cat([repeat(pre, "n d -> b t n d", b=b, t=t), x], dim=2)
        return x

    def _temporal_rows(
        self, b: int, t: int, frame_mask: torch.Tensor | None, host_steps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Temporal embeddings ``[B, T', D]``; a padded clip gets the rows of its real length, so that the padding
        never changes them (matters only when a clip is longer than the table and the table is resampled). The
        lengths are read from ``host_steps`` (:meth:`step_mask` on the host, whose first ``t`` steps are these)
        where given, else from ``frame_mask``."""
        if frame_mask is None or t <= self.pos_embed.temporal.shape[0]:
            return repeat(self.pos_embed.temporal_table(t), "t d -> b t d", b=b)
        lengths = (host_steps[:, :t] if host_steps is not None else frame_mask).sum(1).tolist()
        rows = self.pos_embed.temporal.new_zeros(b, t, self.width)
        for n in set(lengths):
            idx = [i for i, m in enumerate(lengths) if m == n]
            rows[idx, :n] = self.pos_embed.temporal_table(n)
        return rows

    def forward(
        self,
        video: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        output_hidden_states: bool | Sequence[int] = False,
        keep: torch.Tensor | None = None,
    ) -> VisionOutput:
        """Encode a batch of clips.

        Args:
            video: ``[B, T, C, H, W]`` float pixels (an image is ``T = 1``).
            frame_mask: bool ``[B, T]``, True for real frames (None = all real), real frames first (as collate
                pads at the end). Each clip needs one real frame.
            output_hidden_states: True for all hidden states, or indices into them (negative allowed).
            keep: long ``[B, T', K]``, the patch tokens of each time step that stay visible (indices into the
                step's ``N`` patches, prefix tokens excluded; :func:`vidvlm.layers.masking.make_keep`, shape from
                :meth:`token_grid`). Only those (and the prefix tokens) are gathered and go through the blocks;
                None = every token.

        Returns:
            :class:`VisionOutput` with ``T' = ceil(T / tubelet_size)`` (plus one with ``keyframe_stream``); with
            ``keep`` the tokens are ``[B, T', P + K, D]``, the visible ones in ``keep``'s order. A padded
            ``frame_mask`` given on the host also gives ``host_frame_mask`` (:meth:`step_mask`, made there).
        """
        if video.ndim != 5:
            raise ValueError(f"video: expected [B, T, C, H, W], got shape {tuple(video.shape)}")
        if frame_mask is not None:
            # checked where it lies, before it moves: a mask on the host costs an accelerator no synchronisation
            frame_mask = frame_mask.bool()
            if frame_mask.shape != video.shape[:2]:
                raise ValueError(f"frame_mask: expected shape {tuple(video.shape[:2])}, got {tuple(frame_mask.shape)}")
            if not bool(frame_mask.any(1).all()):
                raise ValueError("frame_mask: every clip needs at least one real frame")
            # no padding: unmasked attention can use the fastest (flash) kernels
            frame_mask = None if bool(frame_mask.all()) else frame_mask
        # layout for the host (LLaVA's sequences), made from a host mask before it moves
        host_steps = None if frame_mask is None or frame_mask.device.type != "cpu" else self.step_mask(frame_mask)
        if frame_mask is not None:
            frame_mask = to_device(frame_mask, video.device)
        x, frame_mask = self.embed(video, frame_mask, host_steps)
        if keep is not None:
            p = self.num_prefix_tokens
            x = torch.cat([x[:, :, :p], gather_tokens(x[:, :, p:], to_device(keep, x.device))], dim=2)
        b, t, n, _ = x.shape
        layout = self.cfg.layout
        keep_all = output_hidden_states is not False
        states = [x]

        def record(state: torch.Tensor) -> None:
            # without hidden states only the last is kept, so inference does not hold every block's output
            if keep_all:
                states.append(state)
            else:
                states[0] = state

        if layout == "joint":
            mask = None if frame_mask is None else AttnMask(key_padding=repeat(frame_mask, "b t -> b (t n)", n=n))
            h = rearrange(x, "b t n d -> b (t n) d")
            for blk in self.blocks:
                h = self._run(blk, h, mask)
                record(rearrange(h, "b (t n) d -> b t n d", t=t))
        else:
            tmask = None if frame_mask is None else AttnMask(key_padding=repeat(frame_mask, "b t -> (b n) t", n=n))
            h = rearrange(x, "b t n d -> (b t) n d")
            for i, blk in enumerate(self.blocks):
                if self.temporal_attn is not None:
                    ht = rearrange(h, "(b t) n d -> (b n) t d", b=b)
                    ht = self._run(self.temporal_attn[i], ht, tmask)
                    h = rearrange(ht, "(b n) t d -> (b t) n d", b=b)
                h = self._run(blk, h)
                record(rearrange(h, "(b t) n d -> b t n d", b=b))
            if self.temporal_blocks is not None:
                ht = rearrange(h, "(b t) n d -> (b n) t d", b=b)
                for blk in self.temporal_blocks:
                    ht = self._run(blk, ht, tmask)
                    record(rearrange(ht, "(b n) t d -> b t n d", b=b))
        tokens = self.norm(states[-1])
        pooled = self.fc_norm(self.pool(tokens))
        if frame_mask is not None:
            keep = rearrange(frame_mask, "b t -> b t 1")
            tokens = tokens * rearrange(keep, "b t 1 -> b t 1 1").to(tokens.dtype)
            pooled = pooled * keep.to(pooled.dtype)
        hidden = None
        if keep_all:
            hidden = tuple(states) if output_hidden_states is True else tuple(states[i] for i in output_hidden_states)
        return VisionOutput(tokens, pooled, hidden, frame_mask=frame_mask, host_frame_mask=host_steps)

    def step_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """The real output time steps ``[B, T']`` of bool ``frame_mask [B, T]`` (real frames first), where the mask
        lies: a tubelet is real when its first frame is, the keyframe step always is (what :meth:`embed` gives)."""
        ts = self.cfg.tubelet_size
        steps = tubelet_mask(frame_mask, ts) if ts > 1 else frame_mask.bool()
        if self.keyframe_embed is not None:
            steps = torch.cat([steps, steps.new_ones(steps.shape[0], 1)], dim=1)
        return steps

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """``(T', N)``: output time steps and patch tokens per step of a ``[B, num_frames, C, height, width]``
        clip (the leading dims of a ``keep`` index)."""
        steps = -(-num_frames // self.cfg.tubelet_size) + int(self.keyframe_embed is not None)
        return steps, (height // self.cfg.patch_size) * (width // self.cfg.patch_size)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool each frame: ``[B, T', N', D] -> [B, T', D]`` (before ``fc_norm``)."""
        pool = self.cfg.pool
        if pool == "token":
            return tokens[:, :, 0]
        if pool == "cls_dist":
            return (tokens[:, :, 0] + tokens[:, :, 1]) / 2
        patches = tokens[:, :, self.num_prefix_tokens :]
        if pool == "avg":
            return patches.mean(2)
        if pool == "max":
            return patches.amax(2)
        if pool == "avgmax":
            return 0.5 * (patches.amax(2) + patches.mean(2))
        b = tokens.shape[0]
        pooled = self.attn_pool(rearrange(tokens, "b t n d -> (b t) n d"))
        return rearrange(pooled, "(b t) d -> b t d", b=b)


def _middle_frame(video: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """The middle real frame of each clip (the earlier one of two): ``[B, T, C, H, W]`` -> ``[B, C, H, W]``."""
    b, t = video.shape[:2]
    if frame_mask is None:
        return video[:, (t - 1) // 2]
    idx = to_device((frame_mask.long().sum(1) - 1) // 2, video.device)  # real frames are a prefix of each clip
    return video[torch.arange(b, device=video.device), idx]


def tubelet_mask(frame_mask: torch.Tensor, ts: int) -> torch.Tensor:
    """The real tubelets ``[B, ceil(T/ts)]`` of bool ``frame_mask [B, T]`` (real frames first), where the mask lies:
    a tubelet is real when its first frame is."""
    t_out = -(-frame_mask.shape[1] // ts) * ts
    last = frame_mask.long().sum(1, keepdim=True) - 1
    return (torch.arange(t_out, device=frame_mask.device)[None] <= last)[:, ::ts]


def fill_to_tubelets(
    video: torch.Tensor, frame_mask: torch.Tensor | None, ts: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Make every tubelet well defined: padded frames and frames beyond ``T`` repeat the clip's last real frame
    (a static continuation), so padding never enters a real tubelet and an image becomes a static tubelet.

    Returns ``video [B, ceil(T/ts)*ts, C, H, W]`` and the tubelet mask ``[B, ceil(T/ts)]`` (real if its first
    frame is real) or None.
    """
    b, t = video.shape[:2]
    t_out = -(-t // ts) * ts
    # nothing to fill: no copy of the clip. A mask on an accelerator is not read to find out (the vision tower passes
    # only masks with padding; an all-real one there costs one identity gather)
    whole = frame_mask is None or (frame_mask.device.type == "cpu" and bool(frame_mask.all()))
    if t_out == t and whole:
        return video, None if frame_mask is None else to_device(frame_mask[:, ::ts], video.device)
    if frame_mask is not None:
        frame_mask = to_device(frame_mask, video.device)  # a host mask (the trainer's) joins the clips
    idx = torch.arange(t_out, device=video.device)
    if frame_mask is None:
        src = repeat(idx.clamp(max=t - 1), "t -> b t", b=b)
    else:
        last = frame_mask.long().sum(1, keepdim=True) - 1  # real frames are a prefix of each clip
        src = torch.minimum(repeat(idx, "t -> b t", b=b), last)
    video = torch.gather(video, 1, src[:, :, None, None, None].expand(-1, -1, *video.shape[2:]))
    return video, None if frame_mask is None else tubelet_mask(frame_mask, ts)
