"""Core ML ML Programs (``.mlpackage``, a folder): write, read the metadata, run on macOS only.

``coremltools.convert`` of the traced model (the conversion path coremltools documents for
PyTorch), fp32 compute precision so that it computes what the other fp32 exports compute (Core ML
picks CPU or GPU for fp32; the Neural Engine needs fp16, ``compute_precision=FLOAT16``). Input
``input`` ``[1, C, S, S]`` float, output ``logits`` ``[1, classes]``. The metadata JSON is the
model's ``user_defined_metadata["mobilenets"]``, which Xcode shows and ``MLModel.modelDescription``
returns on the device.

coremltools converts on any OS but runs a model only on macOS, so an export on Linux is written
and not verified (``runs_here``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..metadata import META_KEY
from ..runtimes import Forward, require
from .console import quiet, quiet_import

PACKAGES = ("coremltools",)
INT8_METHOD = None  # no int8 here: an int8 Core ML model could not be verified on this OS


def runs_here() -> bool:
    """Core ML runs models on macOS (and iOS) only."""
    return sys.platform == "darwin"


def write(model: nn.Module, path: Path, example: Tensor, meta: str, calibration: Sequence[Tensor] | None,
          float_parts: tuple[type[nn.Module], ...] = ()) -> None:
    """Convert ``model`` (traced at ``example``'s shape) to an fp32 ML Program at ``path``."""
    if calibration is not None:
        raise ValueError("--int8 is not available for --format coreml")
    with quiet():
        ct = require("coremltools")
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=tuple(example.shape))],
            outputs=[ct.TensorType(name="logits")],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT32,
        )
        mlmodel.short_description = "MobileNet classifier from mobilenets: input normalised as in metadata"
        mlmodel.user_defined_metadata[META_KEY] = meta
        mlmodel.save(str(path))


def _load(path: Path, run: bool):
    ct = quiet_import("coremltools")
    if not (Path(path).is_dir() and (Path(path) / "Manifest.json").is_file()):
        raise ValueError(f"{path} is not a Core ML package (a folder with a Manifest.json)")
    with quiet():
        return ct.models.MLModel(str(path), skip_model_load=not run)


def read_meta(path: Path) -> str | None:
    """The metadata JSON of an ``.mlpackage``, or ``None`` if it has none."""
    return _load(path, run=False).user_defined_metadata.get(META_KEY)


def forward(path: Path, threads: int | None = None) -> Forward:
    """Run an ``.mlpackage`` with Core ML (macOS only); a batch runs image by image."""
    if not runs_here():
        raise ValueError(f"Core ML models run only on macOS and iOS, not on {sys.platform}: copy {path} to a Mac")
    model = _load(path, run=True)

    def run(x: Tensor) -> Tensor:
        images = x.detach().cpu().float().numpy()
        logits = [model.predict({"input": image[None]})["logits"] for image in images]
        return torch.from_numpy(np.concatenate(logits)).to(x.device)

    return run
