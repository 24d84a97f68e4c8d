"""Test-time augmentation for the SSD detectors: the image and its mirror, averaged per default box.

SSD's default boxes are laid out symmetrically (centres at (j + 0.5) / f of every map), so the
box at column j of a map is the mirror of the same box at column f - 1 - j. The heads' outputs
for the mirrored image are put back in the image's order, their x offsets negated, and averaged
with the image's own: each default box's class probabilities and box offsets are the mean of two
views before decoding and NMS, as a classifier's flip TTA averages its probabilities
(``evaluate.with_tta``). No boxes from two passes to merge: one set of detections, twice the
backbone's cost.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .model import SSD


@functools.cache
def mirror_order(map_sizes: tuple[int, ...], per_location: tuple[int, ...]) -> Tensor:
    """For each default box (the heads' order: map, row, column, box), the index of its mirror."""
    order, start = [], 0
    for side, boxes in zip(map_sizes, per_location):
        count = side * side * boxes
        order.append(start + torch.arange(count).view(side, side, boxes).flip(1).reshape(-1))
        start += count
    return torch.cat(order)


class FlipTTA(nn.Module):
    """``detector`` (eval mode) on each image and its mirror, averaged per default box.

    Called like the detector in eval mode: a list of image tensors in, a list of dicts with
    ``boxes`` (input-image pixels), ``scores`` and ``labels`` out.
    """

    def __init__(self, detector: SSD) -> None:
        super().__init__()
        self.detector = detector

    def heads(self, batch: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """The heads' outputs for a resized, normalised ``batch`` (N, 3, S, S), each default box's
        the mean over the two views: log class probabilities and box offsets; and the feature maps."""
        n = len(batch)
        features = list(self.detector.backbone(torch.cat([batch, batch.flip(-1)])).values())
        out = self.detector.head(features)
        order = mirror_order(tuple(f.shape[-1] for f in features),
                             tuple(self.detector.anchor_generator.num_anchors_per_location())).to(batch.device)
        probs = out["cls_logits"].float().softmax(-1)
        probs = (probs[:n] + probs[n:, order]) / 2
        offsets = out["bbox_regression"].float()
        seen = offsets[n:, order] * offsets.new_tensor([-1.0, 1.0, 1.0, 1.0])  # (dx, dy, dw, dh): dx turns round
        return {"cls_logits": probs.clamp_min(torch.finfo(probs.dtype).tiny).log(),  # its softmax: the mean again
                "bbox_regression": (offsets[:n] + seen) / 2}, [f[:n] for f in features]

    @torch.no_grad()
    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        model = self.detector
        original_sizes = [(im.shape[-2], im.shape[-1]) for im in images]
        batch, _ = model.transform(images)  # every image resized to the input size: no padding to mirror
        heads, features = self.heads(batch.tensors)
        anchors = model.anchor_generator(batch, features)
        detections = model.postprocess_detections(heads, anchors, batch.image_sizes)
        return model.transform.postprocess(detections, batch.image_sizes, original_sizes)
