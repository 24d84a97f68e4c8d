"""int8 post-training static quantization of exported models, calibrated on training images.

Two quantizers, one per runtime, both with per-channel int8 weights (needed once batch norm is
folded: the folded depthwise filters differ in scale by orders of magnitude from channel to
channel) and per-tensor activations calibrated on a few hundred training images:

* ``onnx``: ONNX Runtime ``quantize_static`` in QDQ format (standard QuantizeLinear /
  DequantizeLinear pairs; ONNX Runtime fuses them into integer kernels), uint8 activations
  and int8 weights, the combination its x86 VNNI kernels use;
* ``openvino``: NNCF ``nncf.quantize`` on the OpenVINO model (the PERFORMANCE preset:
  symmetric int8 weights and activations) with fast bias correction.

Which one ``mobilenets`` recommends, and the accuracy and speed that decided it, is in
``docs/deploy.md``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .metadata import save_openvino, set_onnx_meta
from .preprocess import Preprocess
from .runtimes import ov_core, require

CALIBRATION_SIZE = 300  # NNCF's default subset size; a few hundred images fix the activation ranges


@dataclass(frozen=True)
class Quantizer:
    name: str
    packages: tuple[str, ...]
    quantize: Callable[[Path, Path, Sequence[Tensor], str], None]  # (fp32 file, int8 file, batches, meta JSON)


def calibration_batches(
    data: str, preprocess: Preprocess, size: int = CALIBRATION_SIZE, batch_size: int = 32, seed: int = 0
) -> list[Tensor]:
    """``size`` training images of ``data``, drawn at random (seeded), as model-input batches.

    The images go through the model's own preprocessing (the evaluation transform, no
    augmentation), so the calibrated ranges are those the model sees at inference.
    """
    from .data import ImageFiles, collate_skipping_none, load_data

    if size < 1:
        raise ValueError(f"--calib-size must be at least 1, got {size}")
    root = Path(data)
    flat = _unlabelled_images(root)
    if flat:  # calibration needs no labels: a plain folder of images will do
        train = ImageFiles([(str(path), 0) for path in flat], grey=preprocess.channels == 1,
                           transform=preprocess.image_transform())
    else:
        # A folder without train/ and val/ needs a split to load; calibration uses the training part.
        split = None if data == "fashion-mnist" or ((root / "train").is_dir() and (root / "val").is_dir()) else 0.1
        bundle = load_data(data, val_split=split, seed=seed, in_chans=preprocess.channels)
        bundle.set_transforms(preprocess.image_transform(), None)  # no augmentation: what the model sees
        train = bundle.train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:size].tolist()
    prepare = preprocess.batch_transform()
    batches = []
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            images, _ = collate_skipping_none([train[i] for i in order[start : start + batch_size]])
            if len(images):
                batches.append(prepare(images))
    if not batches:
        raise ValueError(f"no readable calibration images in {data}")
    if (found := sum(len(b) for b in batches)) < size:
        print(f"warning: calibrating on {found} images: {data} has no more readable ones (--calib-size {size})",
              file=sys.stderr)
    return batches


def _unlabelled_images(root: Path) -> list[Path]:
    """The images directly in ``root`` when it has no sub-folders (no classes), sorted."""
    from .data import images_in

    if not root.is_dir() or any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return []
    return images_in(root)


def _quantize_onnx_runtime(src: Path, dst: Path, batches: Sequence[Tensor], meta: str) -> None:
    onnx = require("onnx")
    q = require("onnxruntime.quantization")
    prepared = dst.with_name("prepared.onnx")
    # shape inference and graph clean-up first, as ONNX Runtime's quantization guide asks
    q.quant_pre_process(str(src), str(prepared))

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch.numpy()}

    q.quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=q.QuantFormat.QDQ,
        per_channel=True,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=q.CalibrationMethod.MinMax,
    )
    proto = onnx.load(str(dst))
    set_onnx_meta(proto, meta)
    onnx.save(proto, str(dst))
    prepared.unlink(missing_ok=True)


def _quantize_nncf(src: Path, dst: Path, batches: Sequence[Tensor], meta: str) -> None:
    nncf = require("nncf")
    nncf.set_log_level(logging.WARNING)
    # one image per item: NNCF's statistics are defined per sample
    images = [x[i : i + 1].numpy() for x in batches for i in range(len(x))]
    quantized = nncf.quantize(
        ov_core().read_model(str(src)),
        nncf.Dataset(images),
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(images),
    )
    save_openvino(quantized, dst, meta)


QUANTIZERS: dict[str, Quantizer] = {
    "onnx": Quantizer("onnxruntime-qdq-per-channel", ("onnx", "onnxruntime"), _quantize_onnx_runtime),
    "openvino": Quantizer("nncf", ("openvino", "nncf"), _quantize_nncf),
}


