"""Load a detector for inference, find the objects in image files, draw them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.utils import draw_bounding_boxes

from ..files import atomic_write
from ..preprocess import open_image
from ..registry import ModelArgs, create_model
from ..weights import load_weights, read_checkpoint


@dataclass
class LoadedDetector:
    """A detector in eval mode with the names of its classes (label k is ``class_names[k - 1]``)."""

    model: nn.Module
    class_names: list[str]
    category_ids: list[int]


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels


def load_detector(checkpoint: str | os.PathLike | None = None, *, model: str | None = None,
                  weights: str | os.PathLike | None = None, threads: int | None = None, **kwargs) -> LoadedDetector:
    """A training checkpoint of this package, a file from ``mobilenets export`` (run in its
    runtime), or ``model`` with optional ``weights``."""
    from ..exported import exported_format, read_meta
    from .runtime import ExportedDetector

    fmt = exported_format(checkpoint) if checkpoint is not None else None
    if fmt:
        meta = read_meta(checkpoint, fmt)
        if meta.task != "detection":
            raise ValueError(f"{checkpoint} is a classifier, not a detector")
        return LoadedDetector(ExportedDetector(checkpoint, meta, threads), list(meta.class_names),
                              list(meta.category_ids))
    source = checkpoint or weights
    ckpt = read_checkpoint(source) if source is not None else {}
    own = ckpt.get("model_args")
    args = ModelArgs(**own) if own else ModelArgs(model, **{"num_classes": 91, **kwargs})
    net = create_model(**args.to_dict())
    if source is not None:
        load_weights(net, source)
    names = list(ckpt.get("class_names") or [f"class {k}" for k in range(1, args.num_classes)])
    ids = list(ckpt.get("category_ids") or range(1, args.num_classes))
    return LoadedDetector(net.eval(), names, ids)


def is_detector_file(path: str | os.PathLike) -> bool:
    """Whether a checkpoint or an exported file holds a detector."""
    from ..exported import exported_format, read_meta
    from ..registry import is_detector

    if exported_format(path):
        return read_meta(path).task == "detection"
    args = read_checkpoint(path).get("model_args") or {}
    return is_detector(args.get("name", ""))


@torch.no_grad()
def detect(loaded: LoadedDetector, paths: Sequence[str | os.PathLike], min_score: float = 0.3
           ) -> list[list[Detection]]:
    """The objects found in each image, best first, scores at least ``min_score``."""
    images = [v2.functional.to_dtype(v2.functional.pil_to_tensor(open_image(p)), torch.float32, scale=True)
              for p in paths]
    found = []
    for out in loaded.model(images):
        keep = out["scores"] >= min_score
        found.append([
            Detection(loaded.class_names[int(label) - 1], float(score), tuple(round(float(v), 1) for v in box))
            for box, score, label in zip(out["boxes"][keep], out["scores"][keep], out["labels"][keep])
        ])
    return found


def draw(path: str | os.PathLike, detections: list[Detection], out: str | os.PathLike) -> Path:
    """The image with its boxes and labels drawn, written to ``out`` (a PNG)."""
    image = v2.functional.pil_to_tensor(open_image(path))
    if detections:
        boxes = torch.tensor([d.box for d in detections])
        labels = [f"{d.label} {d.score:.2f}" for d in detections]
        image = draw_bounding_boxes(image, boxes, labels, colors="red", width=2)
    out = Path(out)
    atomic_write(out, lambda p: v2.functional.to_pil_image(image).save(p, format="PNG"))
    return out
