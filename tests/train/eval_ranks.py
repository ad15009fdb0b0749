"""An embedding model and dataset for evaluation tests whose retrieval is perfect only when every clip keeps its own
captions, and which captions each clip by its number and answers one question of it; also runnable under torchrun.

``python tests/train/eval_ranks.py OUT.json`` evaluates it (on every rank that torchrun starts) and the main process
writes the metrics and the order in which it gathered the clips; the two-process test compares them with one process's.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import torch

from vidvlm.models.base import ANSWER, EMBED_TEXT, EMBED_VIDEO, GENERATE, VLMModel


class Numbered(torch.utils.data.Dataset):
    """Sample ``i`` is a one-frame clip filled with ``i`` and captioned ``clip i`` (and ``clip i again`` when odd);
    its manifest row asks whether it is odd."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows = [
            SimpleNamespace(path=f"{i}.mp4", captions=[f"clip {i}"] + ([f"clip {i} again"] if i % 2 else []),
                            extra={"qa": [{"question": "is it odd?", "answer": "yes" if i % 2 else "no",
                                           "type": "parity"}]})
            for i in range(n)
        ]  # fmt: skip

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        captions = [f"clip {i}"] + ([f"clip {i} again"] if i % 2 else [])
        return {"video": torch.full((1, 3, 2, 2), float(i)), "captions": captions, "text": captions[0], "index": i}


def collate(samples: list[dict]) -> dict:
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "captions": [s["captions"] for s in samples],
        "text": [s["text"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples]),
        "frame_mask": None,
        "timestamps": torch.zeros(len(samples), 1),
    }


class OneHot(VLMModel):
    """Embeds clip ``i`` and its captions as the one-hot of ``i``: retrieval is perfect only when every clip's
    embedding stays paired with its own captions. Its loss is the mean clip number (the same for any sharding).
    It captions clip ``i`` as ``clip i`` and answers every question "yes" (right on the odd clips only)."""

    abilities = frozenset({EMBED_VIDEO, EMBED_TEXT, GENERATE, ANSWER})

    def __init__(self, n: int) -> None:
        super().__init__(SimpleNamespace(family="toy"))
        self.n = n
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch: dict) -> dict:
        return {"number_loss": batch["video"][:, 0, 0, 0, 0].mean() + self.anchor}

    def encode_video(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.nn.functional.one_hot(video[:, 0, 0, 0, 0].long(), self.n).float()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([int(t.split()[1]) for t in texts]), self.n).float()

    def generate(self, video, frame_mask=None, questions=None, decode=None, clip_of=None) -> list[str]:
        numbers = video[:, 0, 0, 0, 0].long()
        numbers = numbers if clip_of is None else numbers[clip_of]
        questions = questions or [None] * len(numbers)
        return [f"clip {int(i)}" if q is None else "yes" for i, q in zip(numbers, questions, strict=True)]


def main() -> None:
    from accelerate import Accelerator

    from vidvlm.train.evaluation import _gather_in_order, _shard_pass, evaluate

    acc = Accelerator(cpu=True)
    model, data = OneHot(11), Numbered(11)
    metrics = evaluate(model, data, batch_size=3, collate_fn=collate, generation=True, accelerator=acc)
    # the order in which the main process receives the clips (retrieval itself does not depend on it)
    _, _, parts, _ = _shard_pass(model, data, 3, collate, 0, acc, embed=True)
    gathered = _gather_in_order(parts, acc)
    if acc.is_main_process:
        order = [caps for part in gathered for caps in part["captions"]]
        with open(sys.argv[1], "w") as f:
            json.dump({"world": acc.num_processes, "metrics": metrics, "captions": order}, f)


if __name__ == "__main__":
    main()
