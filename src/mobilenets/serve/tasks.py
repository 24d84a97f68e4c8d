"""What a model's outputs mean: the task-specific "postprocess" step of serving.

A task turns one batch of raw model outputs into one JSON-ready dict per image; the server adds
the fields every response has (model, task, timings). Classification answers
``{"predictions": [{"label", "index", "score"}, ...]}`` (top-k, best first). A detector would
add a task here answering ``{"detections": [{"label", "score", "box": [x0, y0, x1, y1]}, ...]}``
and be picked by ``task_for``; the routes, batcher and page need no change for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

DEFAULT_TOP_K = 5


class Task(Protocol):
    name: str

    def postprocess(self, outputs: Tensor, top_ks: Sequence[int], class_names: Sequence[str]) -> list[dict]:
        """Raw outputs of a batch -> one dict per image (``top_ks[i]``: results wanted for image i)."""
        ...


@dataclass(frozen=True)
class Classification:
    name: str = "classification"

    def postprocess(self, outputs: Tensor, top_ks: Sequence[int], class_names: Sequence[str]) -> list[dict]:
        probs = outputs.float().softmax(dim=1)
        values, indices = probs.topk(min(max(top_ks), probs.shape[1]), dim=1)
        return [
            {"predictions": [{"label": class_names[i], "index": i, "score": round(v, 6)}
                             for v, i in zip(vs[:k], ids[:k])]}
            for vs, ids, k in zip(values.tolist(), indices.tolist(), top_ks)
        ]


def task_for(model_args: dict | None) -> Task:
    """The task of a model (every model of this package is a classifier so far)."""
    return Classification()
