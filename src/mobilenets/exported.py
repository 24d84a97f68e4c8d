"""The files ``mobilenets export`` writes: their formats, the metadata they carry, and running
them in their own runtimes (ONNX Runtime, OpenVINO, PyTorch, ExecuTorch, LiteRT) behind one call.

Writing and verifying them is ``export.py``'s job; everything that reads an exported file
(``eval``, ``predict``, ``serve``, ``bench``) comes here.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .metadata import META_FILE, META_KEY, ExportMeta
from .mobile import MOBILE_FORMATS
from .preprocess import Preprocess
from .registry import ModelArgs
from .runtimes import Forward, ort_forward, ort_session, ov_compile, ov_forward, require

NOT_EXPORTED_HINT = "expected .onnx, .xml, .ts/.pt, .pt2, .pte, .tflite or .mlpackage from `mobilenets export`"


@dataclass(frozen=True)
class Format:
    """An export format: the file suffixes it accepts, the runtime that runs it, whether int8 exists."""

    name: str
    suffixes: tuple[str, ...]
    runtime: str
    packages: tuple[str, ...]  # Python modules needed to write and run it
    int8: bool
    folder: bool = False  # the "file" is a folder (Core ML packages)


FORMATS: dict[str, Format] = {
    "onnx": Format("onnx", (".onnx",), "ONNX Runtime", ("onnx", "onnxscript", "onnxruntime"), True),
    "openvino": Format("openvino", (".xml",), "OpenVINO", ("openvino",), True),
    "torchscript": Format("torchscript", (".ts", ".pt"), "PyTorch (TorchScript)", (), False),
    "exported-program": Format("exported-program", (".pt2",), "PyTorch (torch.export)", (), False),
    "executorch": Format("executorch", (".pte",), "ExecuTorch (XNNPACK)", MOBILE_FORMATS["executorch"].PACKAGES, True),
    "tflite": Format("tflite", (".tflite",), "LiteRT (XNNPACK)", MOBILE_FORMATS["tflite"].PACKAGES, True),
    "coreml": Format("coreml", (".mlpackage",), "Core ML", MOBILE_FORMATS["coreml"].PACKAGES, False, folder=True),
}


class Exported(NamedTuple):
    """An exported model loaded in its runtime: ``forward(float batch) -> logits``."""

    forward: Forward
    preprocess: Preprocess
    class_names: list[str]


def exported_format(path: str | os.PathLike) -> str | None:
    """The export format of a file, or ``None`` for anything else (e.g. a training checkpoint)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".xml":
        return "openvino"
    mobile = next((name for name in MOBILE_FORMATS if suffix in FORMATS[name].suffixes), None)
    if mobile:
        return mobile
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if any(n.endswith("/constants.pkl") or n.startswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("archive_format") for n in names) or suffix == ".pt2":
        return "exported-program"
    return None


def read_meta(path: str | os.PathLike, fmt: str | None = None) -> ExportMeta:
    """The ``ExportMeta`` stored in an exported file."""
    path = Path(path)
    fmt = fmt or exported_format(path)
    if not path.exists():
        raise FileNotFoundError(f"exported model not found: {path}")
    if fmt == "onnx":
        onnx = require("onnx")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # onnx raises DecodeError and others for a broken file
            raise ValueError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
        text = next((p.value for p in proto.metadata_props if p.key == META_KEY), None)
    elif fmt == "openvino":
        model = read_openvino(path)
        text = model.get_rt_info([META_KEY]).astype(str) if model.has_rt_info([META_KEY]) else None
    elif fmt in ("torchscript", "exported-program"):
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.rsplit("/", 1)[-1] == META_FILE), None)
            text = zf.read(name).decode() if name else None
    elif fmt in MOBILE_FORMATS:
        text = MOBILE_FORMATS[fmt].read_meta(path)
    else:
        raise ValueError(f"{path} is not an exported model ({NOT_EXPORTED_HINT})")
    if not text:
        raise ValueError(f"{path} was not exported by mobilenets: it carries no preprocessing or class names")
    return ExportMeta.from_json(text)


def read_openvino(path: Path):
    """The OpenVINO model of an ``.xml`` and its ``.bin``, with one-line errors for a missing or broken file."""
    if not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path.with_suffix('.bin')} not found: an OpenVINO model is the .xml and its .bin")
    with open(path, "rb") as f:  # OpenVINO would try its other front ends on it, some loudly in C++
        if b"<net" not in f.read(4096):
            raise ValueError(f"{path} is not a readable OpenVINO model (no <net> element: not an OpenVINO IR .xml)")
    from .runtimes import ov_core

    try:
        return ov_core().read_model(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path} is not a readable OpenVINO model ({str(e).strip().splitlines()[0]})") from None


def runtime_forward(path: Path, fmt: str, threads: int | None) -> Forward:
    """Run ``path`` in its runtime (no metadata needed: also used on the temporary export)."""
    if fmt == "onnx":
        forward = ort_forward(ort_session(path, threads))
    elif fmt == "openvino":
        forward = ov_forward(ov_compile(read_openvino(path), threads))
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu").eval()
        forward = _no_grad(module)
    elif fmt == "exported-program":
        module = torch.export.load(str(path)).module()
        forward = _no_grad(module)
    elif fmt in MOBILE_FORMATS:
        forward = MOBILE_FORMATS[fmt].forward(path, threads)
    else:
        raise ValueError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return forward


def _no_grad(module: Callable[[Tensor], Tensor]) -> Forward:
    def forward(x: Tensor) -> Tensor:
        with torch.no_grad():
            return module(x)

    return forward


def load_exported(path: str | os.PathLike, threads: int | None = None) -> Exported:
    """Load a file written by ``mobilenets export``: (forward, preprocess, class names).

    ``forward`` runs the model in its runtime (ONNX Runtime, OpenVINO, PyTorch, ExecuTorch, LiteRT)
    and checks the input shape first, with the same message as the eager model.
    """
    path = Path(path)
    fmt = exported_format(path)
    if fmt is None:
        raise ValueError(f"{path} is not an exported model ({NOT_EXPORTED_HINT})")
    meta = read_meta(path, fmt)
    run = runtime_forward(path, fmt, threads)
    channels = ModelArgs(**meta.model_args).in_chans
    size = meta.input_size

    def forward(x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
            expected = f"(N, {channels}, {size}, {size})"
            raise ValueError(f"{path.name} expects input of shape {expected}, got {tuple(x.shape)}")
        return run(x)

    return Exported(forward, Preprocess.from_dict(meta.preprocess), list(meta.class_names))


class RuntimeModule(nn.Module):
    """An exported model behind the ``nn.Module`` call interface (for code written for models)."""

    def __init__(self, forward: Forward) -> None:
        super().__init__()
        self._forward = forward

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x.cpu()).to(x.device)  # the runtimes run on the CPU


def load_exported_model(path: str | os.PathLike):
    """``load_exported`` as a ``predict.LoadedModel`` (what ``mobilenets eval`` works with)."""
    from .predict import LoadedModel

    forward, preprocess, class_names = load_exported(path)
    return LoadedModel(RuntimeModule(forward).eval(), preprocess, class_names)
