"""SSD default boxes: torchvision's ``DefaultBoxGenerator``, the TF Object Detection API's
three-box first map used by the V1 SSD, and scales fitted to a training set's boxes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from .specs import DefaultBoxes


class DefaultBoxes3(DefaultBoxGenerator):
    """``DefaultBoxGenerator`` whose first map has 3 boxes: a square at scale 0.1 and the
    ratios 2 and 1/2 at the smallest scale (TF's ``reduce_boxes_in_lowest_layer``: the
    finest map is meant for small objects, so it gets fewer, smaller boxes)."""

    def _generate_wh_pairs(self, num_outputs: int, dtype=torch.float32, device=None) -> list[Tensor]:
        pairs = super()._generate_wh_pairs(num_outputs, dtype, device or torch.device("cpu"))
        s, r = self.scales[0], math.sqrt(2.0)
        pairs[0] = torch.tensor([[0.1, 0.1], [s * r, s / r], [s / r, s * r]], dtype=dtype, device=device)
        return pairs

    def num_anchors_per_location(self) -> list[int]:
        return [3, *super().num_anchors_per_location()[1:]]


def default_boxes(spec: DefaultBoxes) -> DefaultBoxGenerator:
    """The generator for a spec; the SSDLite configuration is torchvision's exactly."""
    ratios = [list(r) for r in spec.aspect_ratios]
    cls = DefaultBoxes3 if spec.first_map_three else DefaultBoxGenerator
    return cls(ratios, min_ratio=spec.min_scale, max_ratio=spec.max_scale)


# SSD's scales (0.2 to 0.95 of the side) were chosen for COCO and VOC. On the generated
# Fashion-MNIST set half the boxes are under 0.13 of the side: no default box overlaps those by
# IoU 0.5, so each is learned through its one forced match only (docs/results.md section 10).
MATCH_IOU = 0.5  # SSD's matching threshold
RECALL_TOLERANCE = 0.01  # smallest scales this close to the best recall compete on matches per box
MIN_SCALES = tuple(round(0.02 + 0.01 * k, 2) for k in range(24))  # 0.02 to 0.25


def box_matching(boxes: Tensor, spec: DefaultBoxes, map_sizes: Sequence[int], input_size: int
                 ) -> tuple[float, float]:
    """How well the default boxes fit ``boxes`` (N, 4; x1 y1 x2 y2 in input pixels): the share
    of boxes that some default box overlaps by at least ``MATCH_IOU`` (the "best possible
    recall" of the matching), and how many default boxes do per box on average."""
    maps = [torch.zeros(1, 1, s, s) for s in map_sizes]
    image = torch.zeros(1, 3, input_size, input_size)
    anchors = default_boxes(spec)(ImageList(image, [(input_size, input_size)]), maps)[0]
    matched = box_iou(boxes, anchors) >= MATCH_IOU
    return matched.any(dim=1).double().mean().item(), matched.sum(dim=1).double().mean().item()


def fit_box_scales(boxes: Tensor, spec: DefaultBoxes, map_sizes: Sequence[int], input_size: int
                   ) -> tuple[float, float]:
    """The default boxes' smallest and largest scale (the TF Object Detection API's
    ``min_scale`` and ``max_scale``) for a training set's ``boxes``. The smallest is fitted by
    YOLOv5's criterion for its anchors, the best possible recall: among the smallest scales
    within ``RECALL_TOLERANCE`` of the best recall, the one with the most matches per box (more
    positives to learn from). The largest stays ``spec``'s: large objects keep the many matches
    that SSD's spacing gives them (docs/results.md section 10: fitting both scales traded large
    objects' AP for small ones' and left mAP where it was). No boxes: ``spec``'s scales."""
    high = spec.max_scale
    if not len(boxes):
        return spec.min_scale, high
    scores = {low: box_matching(boxes, dataclasses.replace(spec, min_scale=low), map_sizes, input_size)
              for low in sorted({spec.min_scale, *MIN_SCALES}) if low < high}
    top = max(recall for recall, _ in scores.values())
    low = max((s for s, (recall, _) in scores.items() if recall >= top - RECALL_TOLERANCE), key=lambda s: scores[s][1])
    return low, high
