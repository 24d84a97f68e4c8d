"""What is served: a training checkpoint or an exported file, loaded in its backend.

A training checkpoint runs eagerly in PyTorch (``eager``), or is exported on the fly
(``export.export_model`` into a temporary folder, verified there like any export) and run in
ONNX Runtime (``ort``) or OpenVINO (``openvino``), int8 when calibration data is given. An
exported file runs in its own runtime. Everything that can fail does so here, at start: a file
that cannot be read never reaches the first request.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..export import FORMATS, export_model, exported_format, load_exported, read_meta
from ..preprocess import Preprocess
from ..runtimes import Forward
from .decode import DEFAULT_MAX_PIXELS, decode_image
from .tasks import DEFAULT_TOP_K, Task, task_for

BACKENDS = {"eager": None, "ort": "onnx", "openvino": "openvino"}  # backend -> export format it runs
FORMAT_BACKEND = {"onnx": "ort", "openvino": "openvino", "torchscript": "eager", "exported-program": "eager"}


@dataclass(frozen=True)
class Item:
    """One request's share of a batch: its image, ready for ``batch_transform``, and options."""

    image: Tensor
    top_k: int = DEFAULT_TOP_K


@dataclass
class Servable:
    name: str  # the file served
    backend: str  # eager | ort | openvino
    runtime: str  # what runs it, in words
    forward: Forward
    preprocess: Preprocess
    class_names: list[str]
    task: Task
    int8: str | None = None
    _batch_transform: torch.nn.Module = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._batch_transform = self.preprocess.batch_transform()

    def prepare(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
        """Request bytes -> uint8 image tensor of the model's crop size (raises ``ServeError``)."""
        return self.preprocess.prepare(decode_image(data, max_pixels, grey=self.preprocess.channels == 1))

    def run_batch(self, items: Sequence[Item]) -> list[dict]:
        """Stack, normalise, run and postprocess one batch (images of one size: the crop)."""
        with torch.inference_mode():
            outputs = self.forward(self._batch_transform(torch.stack([item.image for item in items])))
        return self.task.postprocess(outputs, [item.top_k for item in items], self.class_names)

    def warm_up(self, max_batch: int) -> None:
        """Run batch 1 and ``max_batch`` once: a model that cannot run fails at start, and the
        first requests do not pay for lazy initialisation."""
        from PIL import Image

        png = io.BytesIO()
        Image.new("L", (self.preprocess.crop, self.preprocess.crop)).save(png, "PNG")
        image = self.prepare(png.getvalue())
        for n in sorted({1, max_batch}):
            self.run_batch([Item(image)] * n)

    def describe(self) -> str:
        kind = f"int8 ({self.int8})" if self.int8 else "fp32"
        return (f"{self.name}: {self.task.name}, {len(self.class_names)} classes, input {self.preprocess.size} px, "
                f"{self.runtime} ({self.backend}, {kind})")


def load_servable(
    path: str | os.PathLike,
    backend: str | None = None,
    *,
    threads: int | None = None,
    calibration: Callable[[Preprocess], list[Tensor]] | None = None,
    log: Callable[[str], None] = print,
) -> Servable:
    """Load ``path`` for serving; ``calibration(preprocess)`` gives int8 calibration batches."""
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known backends: {', '.join(BACKENDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    fmt = exported_format(path)
    if fmt is not None:
        return _load_exported(path, fmt, backend, threads, int8_asked=calibration is not None)
    from ..predict import load_model

    loaded = load_model(path)
    task = task_for(loaded.model.args.to_dict())
    backend = backend or "eager"
    if backend == "eager":
        if calibration is not None:
            raise ValueError("int8 needs --backend ort or openvino")
        model = loaded.model.eval()
        return Servable(path.name, backend, "PyTorch (eager)", model, loaded.preprocess, loaded.class_names, task)
    fmt = BACKENDS[backend]
    calib = calibration(loaded.preprocess) if calibration is not None else None
    with tempfile.TemporaryDirectory(prefix="mobilenets-serve-") as tmp:
        out = Path(tmp) / f"{path.stem}{FORMATS[fmt].suffixes[0]}"
        result = export_model(loaded.model, out, fmt, preprocess=loaded.preprocess,
                              class_names=loaded.class_names, calibration=calib, log=log)
        forward = load_exported(out, threads).forward  # the runtime holds the model in memory from here on
    return Servable(path.name, backend, FORMATS[fmt].runtime, forward, loaded.preprocess, loaded.class_names, task,
                    result.int8)


def _load_exported(path: Path, fmt: str, backend: str | None, threads: int | None, int8_asked: bool) -> Servable:
    runtime = FORMATS[fmt].runtime
    if backend is not None and backend != FORMAT_BACKEND[fmt]:
        raise ValueError(f"{path.name} is a {fmt} export and runs in {runtime}; --backend applies to training "
                         f"checkpoints (leave it out, or give {FORMAT_BACKEND[fmt]})")
    if int8_asked:
        raise ValueError(f"{path.name} is already exported; for int8, export the checkpoint with --int8")
    meta = read_meta(path, fmt)
    forward, preprocess, class_names = load_exported(path, threads)
    return Servable(path.name, FORMAT_BACKEND[fmt], runtime, forward, preprocess, class_names,
                    task_for(meta.model_args), meta.int8)
