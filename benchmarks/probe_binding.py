"""Binding probes of a vision tower's frozen tokens: can a reader that is told one shape find its colour (and the
reverse) among the tokens of a clip with two or three shapes?

    OMP_NUM_THREADS=2 python benchmarks/probe_binding.py --checkpoint runs/contrastive_tiny_8f_shapes/final \
        --manifest data/shapes_llava8s/qa/manifest.jsonl [--num 1200] [--grids 3 4 8] [--streams frame tubelet]

The LLaVA recipes answer "what colour is the square?" perfectly on one-shape clips and much worse when two or three
shapes share the clip, while "what shape is the red one?" holds up: the answer is a colour of the scene, often the
wrong one. That is binding: the attribute asked for must be read where the named shape is. This script asks whether
the tokens the LM receives make that possible, and how the answer depends on the pooling. For every clip of the
manifest with two or three shapes (a scene's shapes differ in kind and in colour, so each name fits one), it makes
one sample per shape and task:

    color-of-shape   query: the shape's kind ("square")    label: its colour   (the recipe's colour question)
    shape-of-color   query: the shape's colour ("red")     label: its kind     (the recipe's shape question)
    when-of-shape    query: the shape's kind               label: the time of its event (appears, disappears,
                     starts, stops or turns; shapes without one are left out), scored as the recipe's "when"
                     answers are: right when within 0.5 s

and trains an attention reader (``probe_tower.SequenceReader`` with learned token positions, its query token
replaced by a learned embedding of the query word) on the tokens of 70 % of the clips, scoring it on the rest.
Readings: the tower's last two layers (the recipes' multi-level features, concatenated on channels) pooled to g x g
per time step with the class token kept (the recipes' ``spatial2d`` with ``keep_prefix``), for each ``--grids`` g
(``g`` = the patch grid's side: no pooling), from each frame alone (``frame``: one time step per frame, an ensemble
member with ``per_frame: true``), from the tubelets (``tubelet``) and from the two side by side on channels, each
tubelet's tokens beside each of its frames' (``both``: the recipes' per-frame + tubelet ensemble); ``pixels``, the
frames' own patches on the same grid (the model's input, a control for the reader: what it binds with no tower);
``--slow-every k`` keeps the whole grid on steps 0, k, 2k, ... (the ``slowfast`` pooler; k = 7 of 8 steps: the first
and the last); ``--ends`` keeps the first and last time step only (a shape that appears or disappears shows in one
of them; two steps of a whole 8 x 8 grid cost the reader what eight of a 3 x 3 do). Beside each
accuracy: ``in scene``, what a reader that knows the scene's colours (kinds, event times) but not which shape has
which gets by picking one of them (the mean of 1 / shapes; for times, of the share of the scene's event times within
0.5 s of the asked one), ``best constant``, one answer for all (chosen on the training samples), and ``one shape``,
the same reader on the one-shape clips of the manifest (no binding needed, a ceiling for the features). Clips are
read as ``tools/eval.py`` reads them (evaluation transform, uniform sampler). ``--checkpoint`` may also be a trained
LLaVA recipe (``final/`` or a ``checkpoint-*`` folder) whose tower is the per-frame + tubelet ensemble: its two
members, as the LM trained them, give the ``frame`` and ``tubelet`` streams. A probe is a lower bound on what the
tokens hold and a diagnostic, not a benchmark against a peer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.utils.data import DataLoader, Subset

from vidvlm.data.collate import collate_video_text
from vidvlm.data.datasets import VideoTextDataset
from vidvlm.data.sampling import UniformSampler
from vidvlm.errors import VidVLMError
from vidvlm.layers.pooling import SlowFastPooler, Spatial2DPooler
from vidvlm.models.base import FRONT_END
from vidvlm.models.frontend import MultiLevelTower
from vidvlm.models.registry import load
from vidvlm.models.towers import TowerEnsemble

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_tower import SequenceReader  # noqa: E402  (benchmarks/ is not a package)

# task: (query key, label key); "time" is the shape's event time (seconds) from the manifest's "events"
TASKS = {"color-of-shape": ("shape", "color"), "shape-of-color": ("color", "shape"), "when-of-shape": ("shape", "time")}
TOLERANCE = {"time": 0.5}  # labels scored as right within this distance (the recipe's "when" rule)


def members(tower: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The towers read for the ``frame`` and ``tubelet`` streams: a single tower for both, or, for a LLaVA recipe's
    two-member ensemble (a per-frame member, then a tubelet member of the same frames), its two members' own towers
    (trained apart under the LM), each unwrapped from its multi-level wrapper (the probe takes the layers itself)."""
    if not isinstance(tower, TowerEnsemble):
        return tower, tower
    specs = [tuple(spec) for spec in tower.inputs]
    if specs != [(None, 1, True), (None, 1, False)]:
        raise SystemExit(
            f"error: an ensemble of inputs {specs}; the probe reads a per-frame member followed by a tubelet member "
            "of the same frames"
        )
    first, second = (t.tower if isinstance(t, MultiLevelTower) else t for t in tower.towers)
    return first, second


@torch.no_grad()
def tokens(
    checkpoint: str, manifest: Path, num: int, one_shape: int
) -> tuple[dict[str, torch.Tensor], list[list[dict]], int, int]:
    """The tower's last two layers, concatenated on channels, for up to ``num`` clips of two or three shapes and
    ``one_shape`` clips of one: ``{"frame": [N, T, P + n, 2D], "tubelet": [N, T', P + n, 2D],
    "both": [N, T, P + n, 4D]}`` (P prefix tokens, n patches), each clip's shapes, the prefix count P and the grid
    side."""
    model = load(checkpoint).eval()
    model.require(FRONT_END, "probe its vision tower")
    front_end = model.front_end
    dataset = VideoTextDataset(manifest, UniformSampler(front_end.cfg.num_frames), front_end.transform(train=False))
    counts = [len(row.extra.get("shapes") or []) for row in dataset.rows]
    many = [i for i, c in enumerate(counts) if c >= 2][:num]
    single = [i for i, c in enumerate(counts) if c == 1][:one_shape]
    if len(many) < 10:
        raise SystemExit(f"error: {manifest}: {len(many)} rows with two or more shapes in 'shapes'; need at least 10")
    frame_tower, tubelet_tower = members(front_end.base_tower)
    prefix = frame_tower.num_prefix_tokens
    out: dict[str, list[torch.Tensor]] = {"frame": [], "tubelet": [], "pixels": []}
    for batch in DataLoader(Subset(dataset, many + single), batch_size=32, collate_fn=collate_video_text):
        video, mask = batch["video"], batch["frame_mask"]
        for stream in ("frame", "tubelet"):
            if stream == "frame":
                vision = TowerEnsemble.encode_frames(frame_tower, video, mask, True)
            else:
                vision = tubelet_tower(video, mask, output_hidden_states=True)
            out[stream].append(torch.cat([vision.hidden_states[-2], vision.last_hidden_state], dim=-1))
        # the frames themselves on the same grid: each patch's pixels, after an empty prefix token
        side = int(round((out["frame"][-1].shape[2] - prefix) ** 0.5))
        pixels = rearrange(video, "b t c (h p) (w q) -> b t (h w) (c p q)", h=side, w=side)
        out["pixels"].append(torch.cat([pixels.new_zeros(*pixels.shape[:2], prefix, pixels.shape[-1]), pixels], 2))
    shapes = [scene(dataset.rows[i].extra) for i in many + single]
    feats = {k: torch.cat(v) for k, v in out.items()}
    # both streams as the recipes' ensemble gives them: each frame's tokens beside its tubelet's, on channels
    per_tubelet = feats["frame"].shape[1] // feats["tubelet"].shape[1]
    tubelets = repeat(feats["tubelet"], "b t n d -> b (t k) n d", k=per_tubelet)  # each repeated to its frames
    feats["both"] = torch.cat([feats["frame"], tubelets], dim=-1)
    return feats, shapes, prefix, side


def scene(extra: dict) -> list[dict]:
    """A clip's shapes (the manifest's ``shapes``), each with ``time``: the time of its first event, if any."""
    shapes = [dict(s) for s in extra["shapes"]]
    for event in extra.get("events") or []:
        shapes[event["shape"]].setdefault("time", float(event["time"]))
    return shapes


def pooled(x: torch.Tensor, grid: int, prefix: int, slow_every: int = 0) -> torch.Tensor:
    """``[N, T, P + n, D]`` -> ``[N, M, D]``: each time step's grid pooled to ``grid`` x ``grid``, its class
    token(s) first (``spatial2d`` with ``keep_prefix``); with ``slow_every`` k, steps 0, k, 2k, ... keep their whole
    grid (the ``slowfast`` pooler)."""
    if slow_every:
        pool = SlowFastPooler(x.shape[-1], grid, None, slow_every, num_prefix_tokens=prefix, keep_prefix=True)
    else:
        pool = Spatial2DPooler(x.shape[-1], size=grid, num_prefix_tokens=prefix, keep_prefix=True)
    return pool(x)


def samples(shapes: list[list[dict]], task: str) -> tuple[list[int], list[str], list]:
    """One sample per shape of each clip that has the label: (clip index, query word, label)."""
    query_key, label_key = TASKS[task]
    clips, queries, labels = [], [], []
    for i, shapes_of_clip in enumerate(shapes):
        for shape in shapes_of_clip:
            if label_key in shape:
                clips.append(i)
                queries.append(shape[query_key])
                labels.append(shape[label_key])
    return clips, queries, labels


def right(answer, label, label_key: str) -> bool:
    """Whether ``answer`` counts for ``label``: the same, or for numeric labels within ``TOLERANCE[label_key]``."""
    tol = TOLERANCE.get(label_key)
    return abs(answer - label) <= tol + 1e-9 if tol is not None else answer == label


def in_scene(shapes_of_clip: list[dict], label_key: str, label) -> float:
    """What picking the label of a random shape of the clip scores: the share of its shapes' labels that count as
    right for ``label`` (the in-scene chance)."""
    values = [s[label_key] for s in shapes_of_clip if label_key in s]
    return sum(right(v, label, label_key) for v in values) / len(values)


class QueryReader(SequenceReader):
    """:class:`SequenceReader` whose query token is a learned embedding of the query word: ``([B, M, D], [B])`` ->
    ``[B, classes]``."""

    def __init__(self, dim: int, classes: int, words: int, positions: int) -> None:
        super().__init__(dim, classes, positions=positions)
        self.words = nn.Embedding(words, self.query.shape[-1])

    def forward(self, x: torch.Tensor, word: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h = self.proj(x) + self.pos
        h = torch.cat([h, (self.query + self.words(word)[:, None])], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, -1]))


def binding_probe(
    x: torch.Tensor, shapes: list[list[dict]], task: str, train: set[int], seed: int, steps: int
) -> dict[str, float]:
    """Accuracy of a :class:`QueryReader` trained on the samples of clips in ``train`` and scored on the others,
    split by the scored clip's shape count (``1`` and ``2-3``), with the in-scene chance of each."""
    torch.manual_seed(seed)
    label_key = TASKS[task][1]
    clips, queries, labels = samples(shapes, task)
    words, classes = sorted(set(queries)), sorted(set(labels))
    c, q = torch.tensor(clips), torch.tensor([words.index(w) for w in queries])
    y = torch.tensor([classes.index(v) for v in labels])
    fit = torch.tensor([i in train for i in clips])
    fit_idx, test_idx = fit.nonzero()[:, 0], (~fit).nonzero()[:, 0]
    reader = QueryReader(x.shape[-1], len(classes), len(words), positions=x.shape[1])
    opt = torch.optim.AdamW(reader.parameters(), lr=1e-3)
    for _ in range(steps):
        pick = fit_idx[torch.randint(0, len(fit_idx), (32,))]
        opt.zero_grad()
        F.cross_entropy(reader(x[c[pick]], q[pick]), y[pick]).backward()
        opt.step()
    with torch.no_grad():
        guess = torch.cat([reader(x[c[i]], q[i]).argmax(1) for i in test_idx.split(256)])
    scored = test_idx.tolist()

    def hits(answers: list) -> torch.Tensor:  # [len(scored)]: 1.0 where the answer counts
        return torch.tensor([float(right(a, labels[i], label_key)) for a, i in zip(answers, scored, strict=True)])

    reader_hits = hits([classes[g] for g in guess.tolist()])
    # the best constant answer, chosen on the training samples, scored on the same samples as the reader
    fitted = fit_idx.tolist()
    best = max(classes, key=lambda v: sum(right(v, labels[i], label_key) for i in fitted))
    constant = hits([best] * len(scored))
    n = torch.tensor([len(shapes[clips[i]]) for i in scored])
    chance = torch.tensor([in_scene(shapes[clips[i]], label_key, labels[i]) for i in scored])
    return {
        "2-3": reader_hits[n >= 2].mean().item(),
        "chance": chance[n >= 2].mean().item(),
        "constant": constant[n >= 2].mean().item(),
        "1": reader_hits[n == 1].mean().item() if (n == 1).any() else float("nan"),
        "scored": int((n >= 2).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a run's final/ whose model has a video front-end")
    parser.add_argument("--manifest", type=Path, required=True, help="a scenes manifest with 'shapes' ground truth")
    parser.add_argument("--num", type=int, default=1200, help="clips of two or three shapes to use")
    parser.add_argument("--one-shape", type=int, default=300, help="clips of one shape to use (the ceiling column)")
    parser.add_argument("--grids", type=int, nargs="+", default=[3], help="grid sides after pooling")
    streams = ["frame", "tubelet", "both", "pixels"]
    parser.add_argument("--streams", nargs="+", choices=streams, default=streams)
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--steps", type=int, default=2000, help="reader training steps (batch 32)")
    parser.add_argument("--slow-every", type=int, default=0, help="steps 0, k, 2k, ... keep the whole grid (slowfast)")
    parser.add_argument("--ends", action="store_true", help="keep only the first and the last time step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    try:
        feats, shapes, prefix, side = tokens(args.checkpoint, args.manifest, args.num, args.one_shape)
    except VidVLMError as e:
        raise SystemExit(f"error: {e}") from None
    many = [i for i, s in enumerate(shapes) if len(s) >= 2]
    single = [i for i, s in enumerate(shapes) if len(s) == 1]
    train = set(many[: int(len(many) * 0.7)]) | set(single[: int(len(single) * 0.7)])
    print(
        f"{args.checkpoint}: {len(many)} clips of 2-3 shapes, {len(single)} of one; readers train on 70 % of each "
        f"({args.steps} steps), scored on the rest; patch grid {side} x {side}"
    )
    if args.ends:
        print("time steps: the first and the last of each stream")
    slow = f" + whole grid every {args.slow_every}" if args.slow_every else ""
    print("| stream | grid | tokens | task | 2-3 shapes | in scene | best constant | one shape |")
    print("|---|---|---|---|---|---|---|---|")
    for stream in args.streams:
        for grid in args.grids:
            if grid > side:
                raise SystemExit(f"error: --grids {grid}: larger than the tower's {side} x {side} patch grid")
            x = feats[stream][:, [0, -1]] if args.ends else feats[stream]
            x = pooled(x, grid, prefix, args.slow_every)
            for task in args.tasks:
                r = binding_probe(x, shapes, task, train, args.seed, args.steps)
                print(
                    f"| {stream} | {grid}x{grid}{slow} | {x.shape[1]} | {task} | {r['2-3']:.3f} ({r['scored']}) "
                    f"| {r['chance']:.3f} | {r['constant']:.3f} | {r['1']:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
