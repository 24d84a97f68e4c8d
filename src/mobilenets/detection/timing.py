"""Detectors as ``mobilenets bench`` times them: ours on each backend, torchvision's SSDLite as the peer.

Weights are random (timing needs no training), with one change that a trained detector has and a
random one lacks: the classification bias gives the background 99 % of every anchor's score.
With zero biases every class of every anchor scores 1/C, far above the 0.001 score threshold,
and the timing would be that of non-maximum suppression over thousands of boxes per class, in
ours and in the peer; with the background prior (RetinaNet's prior-probability initialisation,
for a softmax) almost nothing passes it, as on an image without objects, so the timing is that of
the network and its box decoding. The same holds for both implementations.

Exported backends run the file written by ``mobilenets export`` (post-processing included, or
after the file for the phone formats) on a batch already at the model's side; eager and the peer
take a list of images at that side, as torchvision's detectors do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from .export import DETECTOR_FORMATS
from .model import BACKGROUND_PRIOR, last_conv, set_background_prior


def with_background_prior(model: nn.Module, prior: float = BACKGROUND_PRIOR) -> nn.Module:
    """Set the last convolution of every classification head so that softmax gives ``prior`` to
    class 0 (background) and the rest evenly to the others, for any input."""
    head = model.head.classification_head
    with torch.no_grad():
        for branch in head.module_list:
            last_conv(branch).weight.mul_(0.01)  # the inputs' share of the logits stays small
    set_background_prior(head, prior)
    return model.eval()


def peer_detector(name: str, width_mult: float, input_size: int, reduced_tail: bool) -> tuple[str, nn.Module | None]:
    """(label, torchvision's model) for our configuration, or (why not, None)."""
    if (name, width_mult, input_size, reduced_tail) != ("ssdlite_mobilenet_v3_large", 1.0, 320, True):
        return ("the peer is torchvision's ssdlite320_mobilenet_v3_large: ssdlite_mobilenet_v3_large "
                "--reduced-tail at width 1.0 and 320 px"), None
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)
    return "torchvision ssdlite320_mobilenet_v3_large, eager fp32", with_background_prior(model)


def detector_runner(backend: str, model: nn.Module, batch: Tensor, workdir: Path, threads: int
                    ) -> tuple[Callable[[], object], int | None]:
    """(timed call, file size) for ``model`` on ``backend`` (``peer``: torchvision's model, eager);
    ``batch`` (N, 3, S, S) in [0, 1]."""
    from ..bench import BACKENDS
    from ..export import fold_batchnorm
    from ..exported import FORMATS

    if backend in ("eager", "peer"):  # ours with BN folded, as for classifiers; the peer as it comes
        net, images = (fold_batchnorm(model) if backend == "eager" else model).eval(), list(batch)
        return (lambda: net(images)), None
    timed = [name for name, b in BACKENDS.items() if b.format in DETECTOR_FORMATS and b.precision != "bf16"]
    if backend not in timed:
        raise ValueError(f"detectors are timed on eager and {', '.join(timed)}; not {backend}")
    from ..exported import read_meta
    from .export import export_detector
    from .runtime import graph_runner

    spec = BACKENDS[backend]
    fmt = spec.format
    classes = model.head.classification_head.num_columns - 1
    path = workdir / f"{backend}{FORMATS[fmt].suffixes[0]}"
    calibration = [torch.rand(8, *batch.shape[1:]) for _ in range(2)] if spec.precision == "int8" else None
    result = export_detector(model, path, fmt, class_names=[str(k) for k in range(classes)],
                             category_ids=list(range(1, classes + 1)), images=[batch], calibration=calibration,
                             log=lambda _: None)
    run = graph_runner(path, read_meta(path), threads)
    return (lambda: run(batch)), result.size_bytes
