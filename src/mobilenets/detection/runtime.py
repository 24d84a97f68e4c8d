"""Exported detectors in their runtimes, behind the call interface of the PyTorch detector.

``load_exported_detector(path)`` gives a callable that takes a list of float images in [0, 1]
of any size and returns torchvision-style detections in each image's own pixels, exactly as
``SSD`` in eval mode does: images are resized to the export's side (bilinear, as torchvision's
``GeneralizedRCNNTransform``), the graph runs (normalisation, decoding and NMS are inside), and
the boxes are scaled back.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..metadata import ExportMeta
from ..mobile import MOBILE_FORMATS
from ..runtimes import ort_session, ov_compile
from .graph import select_detections, split_core

Graph = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]  # (N, 3, S, S) -> boxes, scores, labels


def graph_runner(path: str | os.PathLike, meta: ExportMeta, threads: int | None = None) -> Graph:
    """Run an exported detector in its runtime; boxes, scores and labels as ``DetectorGraph`` gives them.

    ONNX Runtime and OpenVINO run the whole graph; a phone file (``DetectorCore``) stops after the
    box decoding, and the NMS and top-K run here, in PyTorch, as an app runs them after the file.
    """
    fmt = meta.format
    if fmt == "onnx":
        session = ort_session(path, threads)
        name = session.get_inputs()[0].name

        def run(x: Tensor):
            return tuple(torch.from_numpy(o) for o in session.run(None, {name: _array(x)}))
    elif fmt == "openvino":
        from ..exported import read_openvino

        request = ov_compile(read_openvino(Path(path)), threads).create_infer_request()

        def run(x: Tensor):
            request.infer({0: _array(x)})
            return tuple(torch.from_numpy(request.get_output_tensor(i).data.copy()) for i in range(3))
    elif fmt in MOBILE_FORMATS:
        core = MOBILE_FORMATS[fmt].forward(Path(path), threads)

        def run(x: Tensor):
            return select_detections(*split_core(core(x), meta.input_size), meta.max_detections,
                                     meta.iou_threshold, meta.score_threshold)
    else:
        raise ValueError(f"detectors export to onnx, openvino, executorch or tflite, not {fmt!r}")
    return run


def _array(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)


def resize_batch(images: list[Tensor], size: int) -> Tensor:
    """Images of any size as one (N, 3, size, size) batch, as the PyTorch detector resizes them."""
    return torch.cat([F.interpolate(im[None].float(), size=(size, size), mode="bilinear", align_corners=False)
                      for im in images])


def as_detections(images: list[Tensor], size: int, boxes: Tensor, scores: Tensor, labels: Tensor) -> list[dict]:
    """Graph outputs for resized images -> per image ``boxes`` in its own pixels, empty slots dropped."""
    out = []
    for im, b, s, lab in zip(images, boxes, scores, labels):
        keep = lab > 0
        scale = torch.tensor([im.shape[-1] / size, im.shape[-2] / size] * 2)
        out.append({"boxes": b[keep].float() * scale, "scores": s[keep].float(), "labels": lab[keep].long()})
    return out


class ExportedDetector:
    """An exported detector file with the eval-mode call interface of ``SSD``."""

    def __init__(self, path: str | os.PathLike, meta: ExportMeta, threads: int | None = None) -> None:
        self.run, self.size = graph_runner(path, meta, threads), meta.input_size

    def __call__(self, images: list[Tensor]) -> list[dict]:
        images = [im.cpu() for im in images]
        return as_detections(images, self.size, *self.run(resize_batch(images, self.size)))

    def to(self, device) -> ExportedDetector:  # runs on the CPU, whatever the caller asks
        return self

    def eval(self) -> ExportedDetector:
        return self
