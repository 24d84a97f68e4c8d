"""LiteRT (TensorFlow Lite) flatbuffers (``.tflite``): write (fp32 or int8), read the metadata, run.

Written by ``litert_torch.convert`` (its own converter, no TensorFlow) and run by the
``ai_edge_litert`` interpreter with its default XNNPACK delegate, as on a phone.

What an Android developer gets:

* input ``[1, S, S, C]``, channels last (``litert_torch.to_channel_last_io``), the layout of
  a camera frame or ``Bitmap`` buffer; output ``[1, classes]`` logits;
* int8: PT2E with LiteRT's own ``PT2EQuantizer`` (per-channel symmetric int8 weights, int8
  activations), fully integer down to the model's input and output tensors, which are int8 with
  their own scale and zero point (``real = scale * (q - zero_point)``): the app quantizes the
  normalised image with the input's parameters and dequantizes the logits. ``forward`` here does
  exactly that (and passes float through where a file keeps it, as a detector's does).

The metadata JSON is the flatbuffer's ``Model.metadata`` entry ``mobilenets`` (a named buffer,
the place the TFLite schema keeps model metadata), readable with any flatbuffer reader.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..runtimes import Forward, require
from .console import first_line, quiet, quiet_import

PACKAGES = ("litert_torch", "ai_edge_litert", "torchao")
INT8_METHOD = "litert-pt2e-per-channel"
META_NAME = "mobilenets"


def _nhwc(x: Tensor) -> Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


class _GatedHardswish(nn.Module):
    """Hard-swish written as ``x * hardsigmoid(x)``, the same function.

    LiteRT's converter turns an int8 ``nn.Hardswish`` into an int8 HARD_SWISH, which the XNNPACK
    delegate does not take: each one then runs in LiteRT's own kernel and splits the delegated
    graph (V3-Small int8 took 3x the fp32 time). Written this way the gate stays a float island
    (dequantize, add, multiply, quantize) and the product an int8 MUL, all inside XNNPACK.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x * F.hardsigmoid(x)


def _gate_hardswish(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Hardswish):
                setattr(parent, name, _GatedHardswish())
    return model


def write(model: nn.Module, path: Path, example: Tensor, meta: str, calibration: Sequence[Tensor] | None,
          float_parts: tuple[type[nn.Module], ...] = ()) -> None:
    """Convert ``model`` (traced at ``example``'s NCHW shape) to a channels-last ``.tflite`` at ``path``;
    int8 with ``calibration``, except in the modules of the types ``float_parts``."""
    with quiet():
        litert_torch = require("litert_torch")
        litert_torch.config.show_progress = False
        model = litert_torch.to_channel_last_io(model, args=[0]).eval()
        example = _nhwc(example)
        quant_config = None
        if calibration is not None:
            from litert_torch.quantize import pt2e_quantizer
            from litert_torch.quantize.quant_config import QuantConfig

            from .pt2e import quantize_pt2e

            config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
            quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
            model = quantize_pt2e(_gate_hardswish(copy.deepcopy(model)), example, calibration, quantizer,
                                  float_parts, to_input=_nhwc, fold_quantize=False, strict=True)
            quant_config = QuantConfig(pt2e_quantizer=quantizer)
        converted = litert_torch.convert(model, (example,), quant_config=quant_config)
        path.write_bytes(with_metadata(converted.model_content(), meta))


def with_metadata(flatbuffer: bytes, meta: str) -> bytes:
    """The model with ``meta`` as its ``Model.metadata["mobilenets"]`` buffer (replacing an older one)."""
    require("ai_edge_litert")
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(meta.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_NAME, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != META_NAME.encode()] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _read_model(path: Path):
    schema = quiet_import("ai_edge_litert.schema_py_generated")

    data = Path(path).read_bytes()
    if not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError(f"{path} is not a LiteRT (TFLite) model: no TFL3 identifier")
    return schema.Model.GetRootAs(data, 0)


def read_meta(path: Path) -> str | None:
    """The metadata JSON of a ``.tflite``, or ``None`` if it has none."""
    model = _read_model(path)
    try:
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == META_NAME.encode():
                return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    except (struct.error, IndexError, UnicodeDecodeError) as e:  # offsets past the end of a cut file
        raise ValueError(f"{path} is not a readable LiteRT (TFLite) model (truncated or corrupt: {e})") from None
    return None


def _input(image: np.ndarray, detail: dict) -> np.ndarray:
    """One float NCHW image (1, C, H, W) as the interpreter's NHWC input, quantized for an int8 file.

    numpy, one thread: a torch copy here would wake torch's OpenMP threads, whose spinning
    afterwards takes a core from LiteRT's own threads (at 2 threads a call of MobileNetV2 or
    V3-Small took 1.3x to 1.9x its interpreter's time). The channel planes are interleaved by
    ``np.stack`` (a quarter of the time of ``transpose`` and a copy at 224 px), and the int8
    quantization then runs in place on contiguous memory (docs/results.md, section 9).
    """
    nhwc = np.stack(image[0], axis=-1)[None]
    dtype = detail["dtype"]
    if dtype == np.float32:
        return nhwc
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    np.divide(nhwc, scale, out=nhwc)
    np.rint(nhwc, out=nhwc)
    nhwc += zero_point
    np.clip(nhwc, info.min, info.max, out=nhwc)
    return nhwc.astype(dtype)


def _dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    if q.dtype == np.float32:
        return q
    scale, zero_point = detail["quantization"]
    return (q.astype(np.float32) - zero_point) * scale


def forward(path: Path, threads: int | None = None) -> Forward:
    """Run a ``.tflite`` in the LiteRT interpreter (XNNPACK); a batch runs image by image."""
    _read_model(path)  # a clear error for a file that is no TFLite model at all
    interpreter_module = quiet_import("ai_edge_litert.interpreter")
    try:
        with quiet():
            interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{path} cannot be run by LiteRT ({first_line(e)})") from None
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()

    def run(x: Tensor) -> Tensor:
        logits = []
        for image in x.detach().cpu().float().numpy():
            interpreter.set_tensor(inp["index"], _input(image[None], inp))
            interpreter.invoke()
            logits.append(_dequantize(interpreter.get_tensor(out["index"]), out))
        return torch.from_numpy(np.concatenate(logits)).to(x.device)

    return run


def runs_here() -> bool:
    return True
