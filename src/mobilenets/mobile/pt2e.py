"""int8 post-training static quantization of the PyTorch graph (PT2E), before a mobile converter lowers it.

ExecuTorch and LiteRT both quantize the captured graph, not a written file (unlike ONNX Runtime and
NNCF, ``quantize.py``): each runtime's quantizer marks the operators its int8 kernels fuse, torchao's
``prepare_pt2e`` inserts observers, the calibration images run through, and ``convert_pt2e`` turns
the observed ranges into quantize/dequantize pairs that the converter folds into integer kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..runtimes import require


def quantize_pt2e(
    model: nn.Module,
    example: Tensor,
    calibration: Sequence[Tensor],
    quantizer,
    float_parts: tuple[type[nn.Module], ...] = (),
    to_input: Callable[[Tensor], Tensor] = lambda x: x,
    fold_quantize: bool = True,
    strict: bool = False,
) -> nn.Module:
    """``model`` captured at ``example``'s shape, observed on ``calibration`` and converted to int8.

    The modules of the types in ``float_parts`` stay float (a detector's box decoding: see
    ``detection.graph.DetectorCore``).

    The capture has a fixed batch of one image (the shape the mobile file gets), so the
    calibration batches run image by image; ``to_input`` maps an NCHW image to the model's input
    layout (LiteRT's files take NHWC). ``fold_quantize=False`` keeps the weights as float constants
    followed by quantize/dequantize, the form LiteRT's converter expects (its own tests do the same).
    ``strict`` captures with TorchDynamo, which records the Python function behind each node: LiteRT's
    quantizer finds the ``+`` and ``*`` of residuals and gates by it (a non-strict capture left 9 of
    MobileNetV2's 10 residual additions float, and a detector's concatenated box deltas with the
    range +-0.2: docs/results.md, section 9).
    """
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e")
    graph = torch.export.export(model, (example,), strict=strict).module()
    _keep_float(graph, float_parts)
    observed = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            for image in batch.split(1):
                observed(to_input(image))
    return pt2e.convert_pt2e(observed, fold_quantize=fold_quantize)


def _keep_float(graph: torch.fx.GraphModule, parts: tuple[type[nn.Module], ...]) -> None:
    """Mark the nodes of the modules of the types ``parts`` as annotated, with nothing to quantize.

    Every annotator of a quantizer skips a node already annotated, so these stay float. (The
    quantizers' own module filters miss nodes: ExecuTorch's ``cat`` ignores them, and LiteRT's
    compares module types with the qualified names that torch.export records in each node's
    module stack, as used here.)
    """
    quantizer = require("torchao.quantization.pt2e.quantizer.quantizer")
    names = {f"{part.__module__}.{part.__qualname__}" for part in parts}
    for node in graph.graph.nodes:
        if any(module_type in names for _, module_type in node.meta.get("nn_module_stack", {}).values()):
            node.meta[quantizer.Q_ANNOTATION_KEY] = quantizer.QuantizationAnnotation(_annotated=True)
