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
    to_input: Callable[[Tensor], Tensor] = lambda x: x,
    fold_quantize: bool = True,
) -> nn.Module:
    """``model`` captured at ``example``'s shape, observed on ``calibration`` and converted to int8.

    The capture has a fixed batch of one image (the shape the mobile file gets), so the
    calibration batches run image by image; ``to_input`` maps an NCHW image to the model's input
    layout (LiteRT's files take NHWC). ``fold_quantize=False`` keeps the weights as float constants
    followed by quantize/dequantize, the form LiteRT's converter expects (its own tests do the same).
    """
    pt2e = require("torchao.quantization.pt2e.quantize_pt2e")
    graph = torch.export.export(model, (example,)).module()
    observed = pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for batch in calibration:
            for image in batch.split(1):
                observed(to_input(image))
    return pt2e.convert_pt2e(observed, fold_quantize=fold_quantize)
