"""ExecuTorch programs (``.pte``), XNNPACK-delegated: write (fp32 or int8), read the metadata, run.

The path of the ExecuTorch XNNPACK guide: ``torch.export`` -> ``to_edge_transform_and_lower`` with the
``XnnpackPartitioner`` -> ``to_executorch``. int8 uses the ``XNNPACKQuantizer`` (per-channel symmetric
int8 weights, int8 activations) through PT2E (``pt2e.py``); its input and output stay float, so an
app feeds the same tensor to either file.

The metadata JSON is a constant method of the program, ``mobilenets_metadata``, which returns it as a
string: an app reads it with ``module.execute("mobilenets_metadata")``, no sidecar file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..runtimes import Forward, require
from .console import first_line, quiet, quiet_import

PACKAGES = ("executorch", "torchao")
INT8_METHOD = "xnnpack-pt2e-per-channel"
META_METHOD = "mobilenets_metadata"


def write(model: nn.Module, path: Path, example: Tensor, meta: str, calibration: Sequence[Tensor] | None,
          float_parts: tuple[type[nn.Module], ...] = ()) -> None:
    """Lower ``model`` (traced at ``example``'s shape) to an XNNPACK-delegated ``.pte`` at ``path``;
    int8 with ``calibration``, except in the modules of the types ``float_parts``."""
    with quiet():
        require("executorch")
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from executorch.exir import to_edge_transform_and_lower

        from .pt2e import quantize_pt2e

        if calibration is not None:
            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            model = quantize_pt2e(model, example, calibration, quantizer, float_parts)
        program = torch.export.export(model, (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                           constant_methods={META_METHOD: meta})
        path.write_bytes(edge.to_executorch().buffer)


def _load_program(path: Path):
    with open(path, "rb") as f:
        head = f.read(8)
    # The runtime verifies a program's flatbuffer, but bytes without its identifier ("ET" and a
    # two-digit version at offset 4) can crash the process before that: check them first.
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        raise ValueError(f"{path} is not a readable ExecuTorch program (no ExecuTorch program identifier)")
    runtime = quiet_import("executorch.runtime").Runtime.get()
    try:
        with quiet():
            return runtime.load_program(Path(path))
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable ExecuTorch program ({first_line(e)})") from None


def read_meta(path: Path) -> str | None:
    """The metadata JSON of a ``.pte``, or ``None`` if it has none."""
    program = _load_program(path)
    if META_METHOD not in program.method_names:
        return None
    with quiet():
        (text,) = program.load_method(META_METHOD).execute([])
    return text


def forward(path: Path, threads: int | None = None) -> Forward:
    """Run a ``.pte`` in the ExecuTorch runtime; a batch runs image by image (the program has batch 1)."""
    program = _load_program(path)
    if threads:
        # one process-wide pool, shared by every XNNPACK delegate (there is no per-program setting)
        quiet_import("executorch.extension.pybindings.portable_lib")._unsafe_reset_threadpool(threads)
    try:
        with quiet():
            method = program.load_method("forward")
    except RuntimeError as e:
        raise ValueError(f"{path} cannot be run by ExecuTorch ({first_line(e)})") from None

    def run(x: Tensor) -> Tensor:
        images = x.detach().cpu().float().contiguous().split(1)
        try:
            return torch.cat([method.execute([image])[0] for image in images]).to(x.device)
        except RuntimeError as e:  # the runtime logs its reason on stderr and raises only a code
            raise ValueError(f"{path} failed in ExecuTorch ({first_line(e)})") from None

    return run


def runs_here() -> bool:
    return True

