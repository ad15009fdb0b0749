"""Linear probes of a vision tower's frozen features: which attributes of the moving-shapes world can be read off them.

    OMP_NUM_THREADS=2 python benchmarks/probe_tower.py --checkpoint runs/contrastive_tiny_8f_shapes/final \
        --manifest data/shapes_llava8s/qa/manifest.jsonl [--num 900] [--grid 3] [--seed 0] [--sequence] [--per-frame] \
        [--score-manifest data/shapes_llava8s/compositional/manifest.jsonl]

Before a tower is frozen under a language model (the LLaVA recipes), this says what it can give: a logistic
regression per attribute (colour, shape, size, first direction of motion) on four readings of the tower's output for
the manifest's single-shape clips (their labels are unambiguous), trained on the first 70 % and scored on the rest:

    cls        the per-time-step vectors (``pooler_output``), concatenated        [T' * D]
    last{g}x{g}  the last layer's patch grid average-pooled to g x g per time step  [T' * g * g * D]
    pen{g}x{g}   the same for the penultimate hidden state                         [T' * g * g * D]
    mean       the last layer's patch tokens averaged per time step               [T' * D]

(``last3x3`` is what the LLaVA recipes' ``spatial2d`` pooler with ``size: 3`` hands the connector.) A fifth label,
``when``, is the time of the clip's event in seconds (``none`` without one; single-event clips only), scored exactly
(the times lie on a 0.5 s grid); ``when±0.5`` scores the same predictions as the questions do, right when within
0.5 s of the true time (or both ``none``). ``--difference`` adds the same readings of the *changes* between
consecutive time steps (``d`` + reading: step t minus step t - 1, ``[(T' - 1) * ...]``), where an event (a shape
appears, starts, stops, turns) is a change at one step. ``--per-frame`` encodes every frame alone, as an ensemble
member with ``per_frame: true`` does (one time step per frame instead of one per tubelet). Clips are read with the
checkpoint's own evaluation transform and the uniform sampler's centre frames, as ``tools/eval.py`` does.
Features are standardised with the training part's statistics; Adam, 300 full-batch steps, weight decay 1e-3. The
majority class of the scored part is printed beside each accuracy. ``--score-manifest`` scores the same probes (trained
on the same 70 % of ``--manifest``) on a second manifest's single-shape clips too, e.g. colour-shape pairs the first
never shows. ``--gray`` shows the tower the clips in grey (luma in all three channels): colour mostly gone, shape kept.

``--sequence`` adds ``seq{g}x{g}``: the pooled grid read as a *sequence* of tokens, unflattened and unstandardised, by
two pre-norm transformer blocks (width 128, an MLP in front as the LLaVA connector, no position embedding) and a
query token at the end, as a small LM would read its visual tokens; AdamW 1e-3, 1500 steps of batch 32;
``--positions`` gives it learned token positions (without them it cannot tell the time steps apart). It says
whether an attention reader can learn an attribute from those tokens at all. A probe is a lower bound on what the
features hold, and a diagnostic, not a benchmark against a peer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import nn
from torch.utils.data import DataLoader, Subset

from vidvlm.data.collate import collate_video_text
from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.sampling import UniformSampler
from vidvlm.data.transforms import NORMALIZE_PRESETS
from vidvlm.errors import VidVLMError
from vidvlm.eval.qa import WHEN_TOLERANCE_S
from vidvlm.layers.pooling import Spatial2DPooler
from vidvlm.layers.transformer import TransformerBlock
from vidvlm.models.base import FRONT_END
from vidvlm.models.registry import load
from vidvlm.models.towers import TowerEnsemble

ATTRIBUTES = ("direction", "color", "shape", "size", "when")


def to_gray(video: torch.Tensor, preset: str) -> torch.Tensor:
    """Normalised frames ``[B, T, 3, H, W]`` -> the same frames in grey (ITU-R BT.601 luma in all three channels),
    normalised again with ``preset``: hue gone, brightness kept."""
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in NORMALIZE_PRESETS[preset])
    rgb = video * std + mean
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(-3, keepdim=True)
    return (luma - mean) / std


@torch.no_grad()
def features(
    model: nn.Module,
    manifest: Path,
    num: int,
    grid: int,
    per_frame: bool = False,
    gray: bool = False,
    num_frames: int | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``{reading: [N, F]}`` for the first ``num`` single-shape clips of ``manifest`` (see the module docstring),
    and each clip's labels (the shape's ground truth and ``when``); ``tokens{g}x{g}`` is the pooled grid
    unflattened, ``[N, M, D]``. ``model``: a loaded model with a front-end, in eval mode. With ``gray`` the tower
    sees the clips in grey; ``num_frames`` samples that many frames instead of the model's own count."""
    front_end = model.front_end
    frames = num_frames or front_end.cfg.num_frames
    dataset = VideoTextDataset(manifest, UniformSampler(frames), front_end.transform(train=False))
    keep = [i for i, row in enumerate(dataset.rows) if len(row.extra.get("shapes") or []) == 1][:num]
    if not keep:
        raise SystemExit(f"{manifest}: no single-shape rows with a 'shapes' ground truth")
    tower = front_end.base_tower
    pool = Spatial2DPooler(tower.width, size=grid, num_prefix_tokens=tower.num_prefix_tokens)
    g = f"{grid}x{grid}"
    out: dict[str, list[torch.Tensor]] = {"cls": [], f"last{g}": [], f"pen{g}": [], "mean": [], f"tokens{g}": []}
    for batch in DataLoader(Subset(dataset, keep), batch_size=32, collate_fn=collate_video_text):
        if gray:
            batch["video"] = to_gray(batch["video"], front_end.cfg.normalize)
        if per_frame:  # each frame a one-frame clip, as an ensemble member with per_frame: true
            vision = TowerEnsemble.encode_frames(tower, batch["video"], batch["frame_mask"], output_hidden_states=True)
        else:
            vision = tower(batch["video"], batch["frame_mask"], output_hidden_states=True)
        out["cls"].append(rearrange(vision.pooler_output, "b t d -> b (t d)"))
        pooled = pool(vision.last_hidden_state)
        out[f"tokens{g}"].append(pooled)
        out[f"last{g}"].append(rearrange(pooled, "b m d -> b (m d)"))
        out[f"pen{g}"].append(rearrange(pool(vision.hidden_states[-2]), "b m d -> b (m d)"))
        patches = vision.last_hidden_state[:, :, tower.num_prefix_tokens :]
        out["mean"].append(reduce(patches, "b t n d -> b (t d)", "mean"))
    feats = {name: torch.cat(parts) for name, parts in out.items()}
    labels = []
    for i in keep:
        extra = dataset.rows[i].extra
        events = extra.get("events") or []
        labels.append({**extra["shapes"][0], "when": f"{events[0]['time']:.1f}" if len(events) == 1 else "none"})
    return feats, labels


def differences(feats: dict[str, torch.Tensor], steps: int) -> dict[str, torch.Tensor]:
    """Each reading's change from one time step to the next: ``[N, T' * X]`` -> ``[N, (T' - 1) * X]`` (and the
    token grid ``[N, T' * n, D]`` -> ``[N, (T' - 1) * n, D]``)."""
    out = {}
    for name, x in feats.items():
        if x.dim() == 3:
            x = rearrange(x, "b (t n) d -> b t n d", t=steps)
            out[f"d{name}"] = rearrange(x[:, 1:] - x[:, :-1], "b t n d -> b (t n) d")
        else:
            x = rearrange(x, "b (t f) -> b t f", t=steps)
            out[f"d{name}"] = rearrange(x[:, 1:] - x[:, :-1], "b t f -> b (t f)")
    return out


def within_half_second(predicted: torch.Tensor, y: torch.Tensor, classes: list[str]) -> float:
    """Share of "when" predictions (class indices) within 0.5 s of the truth (``tools/eval.py``'s rule); ``none`` is
    right only for ``none``."""
    times = [None if c == "none" else float(c) for c in classes]
    hits = [
        (times[p] is None and times[t] is None)
        or (times[p] is not None and times[t] is not None and abs(times[p] - times[t]) <= WHEN_TOLERANCE_S)
        for p, t in zip(predicted.tolist(), y.tolist(), strict=True)
    ]
    return sum(hits) / len(hits)


def probe(
    x: torch.Tensor, labels: list[str], split: int, seed: int, parts: list[slice] | None = None
) -> list[tuple[float, float, float]]:
    """(accuracy, majority share, within 0.5 s) of a logistic regression trained on ``x[:split]``, scored on each of
    ``parts`` (default: ``x[split:]``)."""
    torch.manual_seed(seed)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    x = (x - x[:split].mean(0)) / (x[:split].std(0) + 1e-6)
    weight = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(x[:split] @ weight + bias, y[:split]).backward()
        opt.step()
    with torch.no_grad():
        predicted = (x @ weight + bias).argmax(1)
    return [_scores(predicted[part], y[part], classes) for part in parts or [slice(split, None)]]


def _scores(predicted: torch.Tensor, y: torch.Tensor, classes: list[str]) -> tuple[float, float, float]:
    """(accuracy, majority share, within 0.5 s: the "when" score, NaN for labels that are not times)."""
    accuracy = (predicted == y).float().mean().item()
    majority = max((y == c).float().mean().item() for c in range(len(classes)))
    timed = all(c == "none" or c.replace(".", "", 1).isdigit() for c in classes)
    return accuracy, majority, within_half_second(predicted, y, classes) if timed else float("nan")


class SequenceReader(nn.Module):
    """MLP to width 128, a query token appended, two pre-norm blocks, a linear head on the query: ``[B, M, D]`` ->
    ``[B, classes]``. With ``positions`` (the number of tokens M) each token gets a learned position embedding, so
    the reader knows which time step a token comes from, as an LM's positions tell it."""

    def __init__(self, dim: int, classes: int, width: int = 128, positions: int = 0) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, width), nn.GELU(), nn.Linear(width, width))
        self.pos = nn.Parameter(torch.randn(1, positions, width) * 0.02) if positions else None
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, 4, 3.0) for _ in range(2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.proj(tokens)
        if self.pos is not None:
            x = x + self.pos
        x = torch.cat([x, self.query.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -1]))


def sequence_probe(
    x: torch.Tensor,
    labels: list[str],
    split: int,
    seed: int,
    positions: bool = False,
    parts: list[slice] | None = None,
) -> list[tuple[float, float, float]]:
    """(accuracy, majority share, within 0.5 s) of a :class:`SequenceReader` trained on ``x[:split]`` ``[N, M, D]``,
    scored on each of ``parts`` (default: ``x[split:]``)."""
    torch.manual_seed(seed)
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    reader = SequenceReader(x.shape[-1], len(classes), positions=x.shape[1] if positions else 0)
    opt = torch.optim.AdamW(reader.parameters(), lr=1e-3)
    for _ in range(1500):
        pick = torch.randint(0, split, (32,))
        opt.zero_grad()
        F.cross_entropy(reader(x[pick]), y[pick]).backward()
        opt.step()
    with torch.no_grad():
        predicted = reader(x).argmax(1)
    return [_scores(predicted[part], y[part], classes) for part in parts or [slice(split, None)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run's final/ whose model has a video front-end")
    parser.add_argument("--manifest", type=Path, required=True, help="a scenes manifest with 'shapes' ground truth")
    parser.add_argument("--num", type=int, default=900, help="single-shape clips to use")
    parser.add_argument("--grid", type=int, default=3, help="patch grid side after pooling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sequence", action="store_true", help="also the attention reader over the pooled tokens")
    parser.add_argument("--per-frame", action="store_true", help="encode each frame alone (one time step per frame)")
    parser.add_argument("--positions", action="store_true", help="the sequence reader gets token positions")
    parser.add_argument("--difference", action="store_true", help="also each reading's change between time steps")
    parser.add_argument("--attributes", nargs="+", choices=ATTRIBUTES, default=list(ATTRIBUTES), help="labels to probe")
    parser.add_argument("--gray", action="store_true", help="the tower sees the clips in grey (no hue)")
    parser.add_argument(
        "--num-frames", type=int, help="frames sampled per clip (default: the model's; e.g. more with --per-frame)"
    )
    parser.add_argument(
        "--score-manifest",
        type=Path,
        help="also score the same probes on this manifest's single-shape clips (e.g. the compositional split)",
    )
    args = parser.parse_args()

    try:
        model = load(args.checkpoint).eval()
        model.require(FRONT_END, "probe its vision tower")
        feats, shapes = features(model, args.manifest, args.num, args.grid, args.per_frame, args.gray, args.num_frames)
        split = int(len(shapes) * 0.7)
        parts = [slice(split, len(shapes))]
        if args.score_manifest is not None:  # appended after the manifest's clips: the probes never train on them
            more, more_shapes = features(
                model, args.score_manifest, args.num, args.grid, args.per_frame, args.gray, args.num_frames
            )
            feats = {name: torch.cat([x, more[name]]) for name, x in feats.items()}
            parts.append(slice(len(shapes), len(shapes) + len(more_shapes)))
            shapes = shapes + more_shapes
    except VidVLMError as e:
        raise SystemExit(f"error: {e}") from None
    attributes = args.attributes
    labels = {a: [s.get(a) or "none" for s in shapes] for a in attributes}
    per = (" (each frame alone)" if args.per_frame else "") + (" (in grey)" if args.gray else "")
    per += f" ({args.num_frames} frames)" if args.num_frames else ""
    scored = " and ".join(f"{p.stop - p.start}" for p in parts)
    print(f"{args.checkpoint}{per}: {len(shapes)} single-shape clips, probes on {split}, scored on {scored}")
    if len(parts) > 1:
        print(f"each cell: {args.manifest.parent.name} held-out part / {args.score_manifest.parent.name}")
    tokens = feats.pop(f"tokens{args.grid}x{args.grid}")
    if args.sequence:
        feats[f"seq{args.grid}x{args.grid}" + ("+pos" if args.positions else "")] = tokens
    if args.difference:
        feats.update(differences(feats, steps=len(feats["cls"][0]) // tokens.shape[-1]))
    columns = [*attributes, "when±0.5"] if "when" in attributes else attributes
    print("| reading | dim | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for name, x in feats.items():
        if x.dim() == 3:
            cells = [sequence_probe(x, labels[a], split, args.seed, args.positions, parts) for a in attributes]
        else:
            cells = [probe(x, labels[a], split, args.seed, parts) for a in attributes]
        text = [" / ".join(f"{acc:.3f} (majority {maj:.2f})" for acc, maj, _ in cell) for cell in cells]
        if "when" in attributes:
            text.append(" / ".join(f"{within:.3f}" for _, _, within in cells[attributes.index("when")]))
        print(f"| {name} | {x[0].numel()} | " + " | ".join(text) + " |")


if __name__ == "__main__":
    main()
