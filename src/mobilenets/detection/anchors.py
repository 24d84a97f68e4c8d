"""SSD default boxes: torchvision's ``DefaultBoxGenerator``, plus the TF Object Detection API's
three-box first map used by the V1 SSD."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

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
