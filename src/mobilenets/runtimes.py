"""Inference runtimes behind one call each: ONNX Runtime sessions and OpenVINO compiled models,
set up for low latency on the CPU, plus the check that a runtime is installed at all.

The runtimes are optional (``pip install 'mobilenets[deploy]'`` for the server runtimes,
``'mobilenets[mobile]'`` for ExecuTorch, LiteRT and Core ML): they are imported on first use,
never at package import.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from functools import cache
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

DEPLOY_EXTRA = "mobilenets[deploy]"
MOBILE_EXTRA = "mobilenets[mobile]"
MOBILE_PACKAGES = ("executorch", "torchao", "litert_torch", "ai_edge_litert", "coremltools")

Forward = Callable[[Tensor], Tensor]  # float input batch -> logits


class MissingRuntime(ValueError):
    """An optional runtime package is not installed (a user error: one line, names the extra)."""


def require(module: str) -> ModuleType:
    """Import an optional runtime, or fail with the pip extra that provides it."""
    if module == "nncf":  # it imports torch's C++-extension helper, which warns about CUDA where there is none
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _missing(module) from None


def require_installed(module: str) -> None:
    """Fail as ``require`` does if the package ``module`` is not installed, without importing it
    (some mobile packages print notices and take seconds on import)."""
    if importlib.util.find_spec(module) is None:
        raise _missing(module)


def _missing(module: str) -> MissingRuntime:
    extra = MOBILE_EXTRA if module.split(".")[0] in MOBILE_PACKAGES else DEPLOY_EXTRA
    return MissingRuntime(f"{module} is not installed: pip install '{extra}'")


# --------------------------------------------------------------------------- ONNX Runtime


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on.

    ``ORT_ENABLE_ALL`` adds the layout optimisations (NCHWc blocked convolutions on x86) on top
    of constant folding and conv+activation fusion; one inter-op thread because a MobileNet is a
    chain, so parallelism comes from inside each operator (``threads`` of them).
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: keep the command's output readable
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_forward(session) -> Forward:
    name = session.get_inputs()[0].name

    def forward(x: Tensor) -> Tensor:
        out = session.run(None, {name: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out).to(x.device)

    return forward


# --------------------------------------------------------------------------- OpenVINO


@cache
def ov_core():
    """One OpenVINO ``Core`` per process (it owns the plugins and their thread pools)."""
    return require("openvino").Core()


def ov_compile(model, threads: int | None = None, precision: str = "f32", hint: str = "LATENCY"):
    """Compile an OpenVINO model (object or ``.xml`` path) for the CPU.

    ``precision`` is the inference precision hint: OpenVINO picks bf16 on its own on some CPUs,
    so f32 is asked for explicitly where exact fp32 results matter. The LATENCY hint runs one
    stream that uses all ``threads`` for each request, the right setting for batch-1 latency.
    """
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if isinstance(model, (str, os.PathLike)):
        model = str(model)
    return ov_core().compile_model(model, "CPU", config)


def ov_forward(compiled) -> Forward:
    request = compiled.create_infer_request()

    def forward(x: Tensor) -> Tensor:
        request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(request.get_output_tensor(0).data.copy()).to(x.device)

    return forward
