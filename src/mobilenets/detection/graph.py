"""A detector as one deployable graph: normalise, backbone and heads, box decoding, NMS, top-K.

``DetectorGraph`` takes a float batch (N, 3, S, S) of images already resized to the model's
side S and scaled to [0, 1], and returns fixed-size outputs: ``boxes`` (N, K, 4; x1, y1, x2,
y2 in the S x S input's pixels), ``scores`` (N, K) and ``labels`` (N, K; 0 where a slot is
empty, its score 0). Everything is a standard operator once exported to ONNX: per-class
non-maximum suppression is ONNX's ``NonMaxSuppression`` (``mobilenets::nms`` below is a
PyTorch op with the same semantics, translated to it), so ONNX Runtime and OpenVINO run the
whole detector, post-processing included, and no NMS is left to the application.

The phone runtimes have no such operator: ``DetectorCore`` stops after the box decoding, and
``select_detections`` (NMS and top-K) runs after the file: in the app, and here in PyTorch
when such a file is evaluated or served.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import nms as tv_nms

from .model import SSD


@torch.library.custom_op("mobilenets::nms", mutates_args=())
def onnx_nms(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
             score_threshold: float) -> Tensor:
    """ONNX ``NonMaxSuppression``: for every image and class, the boxes scoring above
    ``score_threshold``, greedily suppressing those of IoU above ``iou_threshold`` with a kept
    one, at most ``max_per_class``; rows (image, class, box index) in score order per class.
    ``boxes`` (N, A, 4), ``scores`` (N, C, A)."""
    rows = []
    for n in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            candidates = (scores[n, c] > score_threshold).nonzero().flatten()
            keep = candidates[tv_nms(boxes[n, candidates], scores[n, c, candidates], iou_threshold)][:max_per_class]
            rows.append(torch.stack([torch.full_like(keep, n), torch.full_like(keep, c), keep], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)


@onnx_nms.register_fake
def _(boxes, scores, max_per_class, iou_threshold, score_threshold):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)


def onnx_translation() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: ``mobilenets::nms`` as ONNX's op."""
    from onnxscript import opset20 as op

    def nms(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        return op.NonMaxSuppression(
            boxes, scores, op.Constant(value_ints=[max_per_class]), op.Constant(value_floats=[iou_threshold]),
            op.Constant(value_floats=[score_threshold]),
        )

    return {torch.ops.mobilenets.nms.default: nms}


class DetectorGraph(nn.Module):
    """The whole of an ``SSD``'s inference on resized images, with fixed-size outputs (see above)."""

    def __init__(self, model: SSD, max_detections: int = 100, score_threshold: float | None = None) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1), persistent=False)
        self.size = model.input_size
        self.decoding = BoxDecoding(model.box_coder, self._anchors(model), self.size)
        self.max_detections = max_detections
        self.iou_threshold = model.nms_thresh
        self.score_threshold = model.score_thresh if score_threshold is None else score_threshold

    @staticmethod
    @torch.no_grad()
    def _anchors(model: SSD) -> Tensor:
        from torchvision.models.detection.image_list import ImageList

        was_training = model.training
        model.eval()
        try:
            x = torch.zeros(1, 3, model.input_size, model.input_size)
            maps = list(model.backbone(x).values())
            return model.anchor_generator(ImageList(x, [(model.input_size,) * 2]), maps)[0]
        finally:
            model.train(was_training)

    def network(self, x: Tensor) -> dict[str, Tensor]:
        """The head's outputs: every anchor's box deltas and class logits."""
        return self.head(list(self.backbone((x - self.mean) / self.std).values()))

    def decode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Every anchor's box (N, A, 4; input pixels) and class scores (N, C, A; background dropped)."""
        return self.decoding(self.network(x))

    def select(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``decode``'s boxes and scores after this graph's NMS and top-K."""
        return select_detections(boxes, scores, self.max_detections, self.iou_threshold, self.score_threshold)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.select(*self.decode(x))


class BoxDecoding(nn.Module):
    """Head outputs -> every anchor's box (N, A, 4; input pixels, clamped to the image) and class
    scores (N, C, A; softmax, background dropped)."""

    def __init__(self, box_coder, anchors: Tensor, size: int) -> None:
        super().__init__()
        self.box_coder, self.size = box_coder, size
        self.register_buffer("anchors", anchors, persistent=False)  # (A, 4) x1 y1 x2 y2

    def forward(self, out: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        n, a = out["bbox_regression"].shape[:2]
        boxes = self.box_coder.decode_single(out["bbox_regression"].reshape(-1, 4),
                                             self.anchors.repeat(n, 1)).reshape(n, a, 4).clamp(0, self.size)
        return boxes, out["cls_logits"].softmax(-1)[..., 1:].transpose(1, 2)


def select_detections(boxes: Tensor, scores: Tensor, max_detections: int, iou_threshold: float,
                      score_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class NMS, then the ``max_detections`` best: boxes (N, K, 4), scores (N, K), labels (N, K)."""
    n, a = boxes.shape[:2]
    selected = onnx_nms(boxes, scores, max_detections, iou_threshold, score_threshold)
    # Rows of -1 (OpenVINO pads its NMS output) add nothing; valid rows mark their box once.
    valid = (selected[:, 0] >= 0).to(scores.dtype)
    selected = selected.clamp(min=0)
    keep = torch.zeros_like(scores).index_put((selected[:, 0], selected[:, 1], selected[:, 2]), valid,
                                              accumulate=True)
    top_scores, top = (scores * (keep > 0)).reshape(n, -1).topk(max_detections, dim=1)
    labels = torch.where(top_scores > 0, top // a + 1, torch.zeros_like(top))
    top_boxes = boxes.gather(1, (top % a).unsqueeze(-1).expand(-1, -1, 4))
    return top_boxes, top_scores, labels


class CoreOutputs(nn.Module):
    """Head outputs -> ``DetectorCore``'s one tensor (N, A, 4 + C)."""

    def __init__(self, decoding: BoxDecoding) -> None:
        super().__init__()
        self.decoding = decoding

    def forward(self, out: dict[str, Tensor]) -> Tensor:
        boxes, scores = self.decoding(out)
        return torch.cat([boxes / self.decoding.size, scores.transpose(1, 2)], dim=-1)


class DetectorCore(nn.Module):
    """A ``DetectorGraph`` up to its decoded boxes, for runtimes without NMS (ExecuTorch, LiteRT).

    One output (N, A, 4 + C): each anchor's box as fractions of the input side, then its class
    scores, all in [0, 1]. ``split_core`` and ``select_detections`` finish the job after the file.

    An int8 file quantizes the network and keeps ``FLOAT_PARTS`` (box decoding, softmax, output)
    float: one int8 scale over the output puts every box corner on a grid of 1/255 of the side, and
    int8 arithmetic on centres and sizes moves boxes further (the trained detector of
    docs/results.md, section 9, in ExecuTorch: 60.4 % mAP that way, 64.7 % so, 65.3 % in fp32).
    """

    FLOAT_PARTS = (CoreOutputs,)

    def __init__(self, graph: DetectorGraph) -> None:
        super().__init__()
        self.detector = graph  # not ``graph``: an exported program's module has a ``graph`` of its own
        self.outputs = CoreOutputs(graph.decoding)

    def forward(self, x: Tensor) -> Tensor:
        return self.outputs(self.detector.network(x))


def split_core(out: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """``DetectorCore`` output -> (boxes (N, A, 4) in input pixels, scores (N, C, A))."""
    out = out.float()
    return out[..., :4] * size, out[..., 4:].transpose(1, 2).contiguous()
