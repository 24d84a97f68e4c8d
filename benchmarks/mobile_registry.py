"""Every registry model at every paper width, exported to the phone runtimes and verified there.

    .venv/bin/python benchmarks/mobile_registry.py --formats executorch tflite --widths 1.0 0.75 0.5 0.35 0.25 \\
        [--models mobilenet_v2 ...] [--int8] [--input-size 64]

Random weights with non-trivial batch-norm statistics (what ``tests/exports.py`` builds), a small
input side to keep each conversion short. Prints one line per file: fp32 max abs difference from
PyTorch (the export fails above 1e-4), or for ``--int8`` the difference and the top-1 agreement on
the random calibration batches. Asserts nothing; a failed export is printed and the run goes on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from mobilenets import MODELS, create_model
from mobilenets.export import export_model
from mobilenets.exported import FORMATS
from mobilenets.preprocess import Preprocess


def with_bn_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms that are not the identity, so that folding and int8 ranges have work to do."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--formats", nargs="+", default=["executorch", "tflite"])
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--int8", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    size = args.input_size
    calibration = [torch.randn(8, 3, size, size) for _ in range(2)] if args.int8 else None
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for width in args.widths:
                model = with_bn_statistics(create_model(name, width_mult=width, num_classes=10))
                for fmt in args.formats:
                    path = Path(tmp) / f"{name}-{width:g}{FORMATS[fmt].suffixes[0]}"
                    start = time.perf_counter()
                    try:
                        r = export_model(model, path, fmt, preprocess=Preprocess.imagenet(size),
                                         class_names=[str(i) for i in range(10)], calibration=calibration,
                                         log=lambda _: None)
                    except ValueError as e:
                        failures += 1
                        print(f"{name:<22} {width:>5g} {fmt:<11} FAILED: {e}", flush=True)
                        continue
                    seconds = time.perf_counter() - start
                    detail = (f"max diff {r.max_diff:.1e}" if r.max_diff is not None else "not run here")
                    if r.top1_agreement is not None:
                        detail += f", top-1 agreement {r.top1_agreement:.0%}"
                    print(f"{name:<22} {width:>5g} {fmt:<11} {'int8' if r.int8 else 'fp32'} {detail}, "
                          f"{r.size_bytes / 1e6:.2f} MB, {seconds:.0f} s", flush=True)
    print(f"{failures} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
