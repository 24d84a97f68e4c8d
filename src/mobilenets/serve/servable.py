"""What is served: a training checkpoint or an exported file, loaded in its backend as a task.

A training checkpoint runs eagerly in PyTorch (``eager``), or is exported on the fly into a
temporary folder (verified there like any export) and run in ONNX Runtime (``ort``) or
OpenVINO (``openvino``); a classifier can be quantized to int8 on the way. An exported file runs
in its own runtime. Classifiers and detectors are both served (``tasks.py``). Everything that
can fail does so here, at start: a file that cannot be read never reaches the first request.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..exported import FORMATS, exported_format, read_meta
from ..layers import ACTIVATIONS
from ..preprocess import Preprocess
from .decode import DEFAULT_MAX_PIXELS, decode_image
from .tasks import Classifier, Detector, Item

BACKENDS = {"eager": None, "ort": "onnx", "openvino": "openvino"}  # backend -> export format it runs
FORMAT_BACKEND = {"onnx": "ort", "openvino": "openvino", "torchscript": "eager", "exported-program": "eager",
                  "executorch": "executorch", "tflite": "litert", "coreml": "coreml"}
EAGER = "PyTorch (eager)"
INPLACE_ACTIVATIONS = tuple(ACTIVATIONS.values())  # the family's activations, each with an in-place form

Calibration = Callable[[Preprocess], list[Tensor]]  # a classifier's preprocessing -> int8 calibration batches


@dataclass
class Servable:
    name: str  # the file served
    backend: str  # eager | ort | openvino
    runtime: str  # what runs it, in words
    task: Classifier | Detector
    int8: str | None = None

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Tensor, tuple[int, int]]:
        """Request bytes -> the task's input for one image, and the image's size (raises ``ServeError``)."""
        img = decode_image(data, max_pixels, grey=self.task.grey)
        return self.task.prepare(img), img.size

    def run_batch(self, items: list[Item]) -> list[dict]:
        return self.task.run_batch(items)

    def warm_up(self, max_batch: int) -> None:
        """Decode an image and run batch 1 and ``max_batch`` once: a model that cannot run fails
        at start, and the first requests do not pay for lazy initialisation."""
        png = io.BytesIO()
        Image.new("RGB", (64, 48)).save(png, "PNG")
        image, size = self.prepare(png.getvalue())
        for n in sorted({1, max_batch}):
            self.run_batch([Item(image, size)] * n)

    def describe(self) -> str:
        kind = f"int8 ({self.int8})" if self.int8 else "fp32"
        return (f"{self.name}: {self.task.name}, {len(self.task.class_names)} classes, input "
                f"{self.task.input_size} px, {self.runtime} ({self.backend}, {kind})")


def load_servable(
    path: str | os.PathLike,
    backend: str | None = None,
    *,
    threads: int | None = None,
    calibration: Calibration | None = None,
    log: Callable[[str], None] = print,
) -> Servable:
    """Load ``path`` for serving; ``calibration`` (classifiers) turns on int8."""
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    fmt = exported_format(path)
    if path.is_dir() and fmt is None:
        raise IsADirectoryError(f"{path} is a folder; give the checkpoint or exported file in it")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if fmt is not None:
        if backend is not None and backend != FORMAT_BACKEND[fmt]:
            raise ValueError(f"{path.name} is exported ({fmt}) and runs in {FORMATS[fmt].runtime}; --backend applies "
                             "to training checkpoints (leave it out)")
        if calibration is not None:
            raise ValueError(f"{path.name} is already exported; for int8, export the checkpoint with --int8")
        return _load_exported(path, fmt, threads)
    backend = backend or "eager"
    from ..registry import is_detector
    from ..weights import read_checkpoint

    model_args = read_checkpoint(path).get("model_args")
    if not model_args:
        raise ValueError(f"{path.name} holds weights but no model arguments: serve a training checkpoint, or export "
                         f"the weights first (mobilenets export --model NAME --weights {path.name} ...)")
    if is_detector(model_args["name"]):
        if calibration is not None:
            raise ValueError("int8 detectors: export with `mobilenets export --int8 --calib-data DATA`, then serve "
                             "the file")
        return _load_detector_checkpoint(path, backend, threads, log)
    if calibration is not None and backend == "eager":
        raise ValueError("int8 needs --backend ort or openvino")
    return _load_classifier_checkpoint(path, backend, threads, calibration, log)


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as the eager server runs it: batch norm folded into the convolutions, activations
    in place, weights channels-last (oneDNN then keeps its blocked layout from layer to layer).
    Each saves memory traffic: V1 at 224 px, batch 8, 2 threads, folded and channels-last ran in
    0.8x the time of the model as trained, activations in place in 0.9x of that (docs/results.md,
    section 8)."""
    from ..export import fold_batchnorm

    model = fold_batchnorm(model)
    for module in model.modules():
        if isinstance(module, INPLACE_ACTIVATIONS):  # each follows a layer whose output nothing else reads
            module.inplace = True
    return model.to(memory_format=torch.channels_last)


def _load_exported(path: Path, fmt: str, threads: int | None) -> Servable:
    meta = read_meta(path, fmt)
    runtime = FORMATS[fmt].runtime
    if meta.task == "detection":
        from ..detection.predict import load_detector

        loaded = load_detector(path, threads=threads)
        task = Detector(loaded.model, meta.input_size, loaded.class_names)
    else:
        from ..exported import load_exported

        forward, preprocess, class_names = load_exported(path, threads)
        task = Classifier(forward, preprocess, class_names)
    return Servable(path.name, FORMAT_BACKEND[fmt], runtime, task, meta.int8)


def _load_classifier_checkpoint(path: Path, backend: str, threads: int | None, calibration: Calibration | None,
                                log: Callable[[str], None]) -> Servable:
    from ..export import export_model
    from ..predict import load_model

    loaded = load_model(path)
    if backend == "eager":
        return Servable(path.name, backend, EAGER, Classifier(inference_copy(loaded.model), loaded.preprocess,
                                                              loaded.class_names))
    calib = calibration(loaded.preprocess) if calibration is not None else None

    def export(out: Path):
        return export_model(loaded.model, out, BACKENDS[backend], preprocess=loaded.preprocess,
                            class_names=loaded.class_names, calibration=calib, log=log)

    return _export_and_load(path, backend, threads, export)


def _load_detector_checkpoint(path: Path, backend: str, threads: int | None,
                              log: Callable[[str], None]) -> Servable:
    from ..detection.export import export_detector
    from ..detection.predict import load_detector

    loaded = load_detector(path)
    size = loaded.model.input_size
    if backend == "eager":
        return Servable(path.name, backend, EAGER, Detector(loaded.model, size, loaded.class_names))
    images = [torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))]  # for the export's check

    def export(out: Path):
        return export_detector(loaded.model, out, BACKENDS[backend], class_names=loaded.class_names,
                               category_ids=loaded.category_ids, images=images, log=log)

    return _export_and_load(path, backend, threads, export)


def _export_and_load(path: Path, backend: str, threads: int | None, export: Callable[[Path], object]) -> Servable:
    """Export into a temporary folder with ``export(out)`` and load the result in its runtime (which
    holds the model in memory from then on, so the folder can go)."""
    fmt = BACKENDS[backend]
    with tempfile.TemporaryDirectory(prefix="mobilenets-serve-") as tmp:
        out = Path(tmp) / f"{path.stem}{FORMATS[fmt].suffixes[0]}"
        export(out)
        served = _load_exported(out, fmt, threads)
    served.name = path.name
    return served
