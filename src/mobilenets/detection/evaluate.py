"""COCO mAP of a detector: pycocotools' COCOeval on the model's detections.

Reported as fractions: ``map`` (AP at IoU .50:.05:.95), ``map50``, ``map75`` and
``map_small`` / ``map_medium`` / ``map_large`` (objects under 32^2, up to 96^2, over 96^2
pixels), each over all classes; -1 where the set has no object of that size.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..distributed import Dist
from .annotations import Annotations, to_coco
from .dataset import DetectionDataset, collate

METRICS = ("map", "map50", "map75", "map_small", "map_medium", "map_large")


@torch.no_grad()
def detections(model: Callable[[list[Tensor]], list[dict]], loader, device: torch.device,
               category_ids: list[int]) -> list[dict]:
    """The model's boxes for every image, as COCO results (x, y, w, h; the file's category ids)."""
    results = []
    for images, targets in loader:
        if not images:
            continue
        for out, target in zip(model([im.to(device) for im in images]), targets):
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": target["image_id"], "category_id": category_ids[label - 1],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return results


def coco_map(annotations: Annotations, results: list[dict]) -> dict[str, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = to_coco(annotations.records, annotations.class_names, annotations.category_ids, root=None)
        truth.createIndex()
        if not results:
            return dict.fromkeys(METRICS, 0.0)
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: float(v) for k, v in zip(METRICS, evaluator.stats[:6])}


def evaluate_detector(model: nn.Module, annotations: Annotations, dist: Dist | None = None,
                      batch_size: int = 16, workers: int = 0) -> dict[str, float]:
    """mAP of ``model`` (eval mode) on ``annotations``; under DDP each process runs its shard."""
    dist = dist or Dist()
    records = annotations.records[dist.rank :: dist.world_size]
    loader = DataLoader(DetectionDataset(records), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    results = detections(model, loader, dist.device, annotations.category_ids)
    if dist.enabled:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics = coco_map(annotations, results)
    metrics["images"] = len(annotations.records)
    return metrics
