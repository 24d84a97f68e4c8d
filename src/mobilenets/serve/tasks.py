"""What a model does with images: one class per task, holding the model it runs.

A task prepares one decoded image as its model's input (in a worker thread) and runs a batch of
them, turning the outputs into one JSON-ready dict per image (on the inference thread); the
server adds the fields every response has (model, task, timings). The routes, the batcher and
the metrics are the same for every task.

* ``Classifier``: the image through the model's own ``Preprocess`` (resize, centre crop), the
  batch stacked, normalised and run once; answers ``{"predictions": [{"label", "index",
  "score"}, ...]}``, the top-k classes by softmax probability, best first.
* ``Detector``: the image resized to the detector's side, as the detector itself resizes it, the
  batch run once (SSD in PyTorch, or an exported graph with NMS inside); answers
  ``{"detections": [{"label", "index", "score", "box": [x1, y1, x2, y2]}, ...]}``, boxes in the
  sent image's pixels, best first, those scoring at least ``min_score``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F
from torchvision.transforms import v2

from ..preprocess import Preprocess

DEFAULT_TOP_K = 5  # classes
DEFAULT_MIN_SCORE = 0.3  # boxes (as `mobilenets predict`)


@dataclass(frozen=True)
class Item:
    """One request's share of a batch: its prepared image, the image's own size, its options."""

    image: Tensor
    size: tuple[int, int]  # width, height of the image sent
    top_k: int | None = None  # most results (default: the task's)
    min_score: float | None = None  # detectors: lowest score kept


@dataclass
class Classifier:
    forward: Callable[[Tensor], Tensor]  # float batch -> logits
    preprocess: Preprocess
    class_names: list[str]
    name: str = "classification"
    _transform: Callable = field(init=False, repr=False)
    _batch_transform: torch.nn.Module = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._transform = self.preprocess.image_transform()
        self._batch_transform = self.preprocess.batch_transform()

    @property
    def grey(self) -> bool:
        return self.preprocess.channels == 1

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    def prepare(self, img: Image.Image) -> Tensor:
        return self._transform(v2.functional.pil_to_tensor(img))

    def run_batch(self, items: Sequence[Item]) -> list[dict]:
        with torch.inference_mode():
            logits = self.forward(self._batch_transform(torch.stack([item.image for item in items])))
        probs = logits.float().softmax(dim=1)
        top_ks = [min(item.top_k or DEFAULT_TOP_K, probs.shape[1]) for item in items]
        values, indices = probs.topk(max(top_ks), dim=1)
        return [
            {"predictions": [{"label": self.class_names[i], "index": i, "score": round(v, 6)}
                             for v, i in zip(vs[:k], ids[:k])]}
            for vs, ids, k in zip(values.tolist(), indices.tolist(), top_ks)
        ]


@dataclass
class Detector:
    model: Callable[[list[Tensor]], list[dict]]  # SSD in eval mode, or an exported one (same interface)
    input_size: int
    class_names: list[str]  # label k is class_names[k - 1]
    name: str = "detection"
    grey: bool = False

    def prepare(self, img: Image.Image) -> Tensor:
        """Float image in [0, 1] resized to the detector's side, as the detector resizes it
        (bilinear to S x S), so that the detector's own resize is the identity."""
        x = v2.functional.to_dtype(v2.functional.pil_to_tensor(img), torch.float32, scale=True)
        size = (self.input_size, self.input_size)
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]

    def run_batch(self, items: Sequence[Item]) -> list[dict]:
        with torch.inference_mode():
            outputs = self.model([item.image for item in items])
        return [self._answer(out, item) for out, item in zip(outputs, items)]

    def _answer(self, out: dict, item: Item) -> dict:
        width, height = item.size
        scale = torch.tensor([width, height, width, height]) / self.input_size
        min_score = DEFAULT_MIN_SCORE if item.min_score is None else item.min_score
        order = out["scores"].argsort(descending=True)
        found = [
            {"label": self.class_names[int(label) - 1], "index": int(label) - 1, "score": round(float(score), 6),
             "box": [round(float(v), 1) for v in box * scale]}
            for box, score, label in zip(out["boxes"][order], out["scores"][order], out["labels"][order])
            if score >= min_score and label > 0
        ]
        return {"detections": found[: item.top_k] if item.top_k else found}
