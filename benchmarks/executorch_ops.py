"""Where an ExecuTorch program spends its time: XNNPACK's time per operator, summed by kind.

    .venv/bin/python benchmarks/executorch_ops.py --threads 1 2 --rounds 3

Each model (V2, V3-Large and V3-Small unless ``--models`` says otherwise; width 1.0, 224x224,
random weights) is written as the fp32 and the int8 ``.pte`` that ``mobilenets bench`` times
(``executorch`` and ``executorch-int8``). Each file is loaded with ExecuTorch's ETDump on and
called ``--calls`` times; the median time of each operator is summed by kind (1x1 convolutions
and the classifier, depthwise, full (the stem), element-wise, layout and conversions), next to the median of
the whole call. Every round runs the files again, in the reverse order every other round; the
table gives the medians over the rounds, and the int8 column its speed-up over fp32. Asserts
nothing; quote the numbers with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch

from mobilenets import create_model
from mobilenets.bench import Config
from mobilenets.bench.worker import export_for_backend
from mobilenets.registry import is_detector, list_models
from mobilenets.runtimes import require

KINDS = ("1x1 convolutions and the classifier", "depthwise convolutions", "full convolutions (the stem)",
         "element-wise (h-swish, add, multiply, mean)", "layout and conversions")
CALL = "the whole call (Method::execute)"
NOT_OPERATORS = ("Method::", "Program::", "OPERATOR_CALL", "native_call", "DELEGATE_CALL")


def kind(operator: str) -> str:
    """The kind of an XNNPACK operator, from the name ETDump records (``Convolution (NHWC, QC8) DWConv #3``)."""
    if "IGEMM" in operator:  # a full convolution: only the stem, except in mobilenet_v1_conv
        return KINDS[2]
    if "DWConv" in operator:
        return KINDS[1]
    if "GEMM" in operator:
        return KINDS[0]
    if operator.startswith(("Transpose", "Convert", "Static Reshape", "Copy")):
        return KINDS[4]
    return KINDS[3]


def profile(path: Path, calls: int, dump: Path) -> Counter:
    """ms per kind of operator (and of the whole call): medians over ``calls`` calls."""
    portable = require("executorch.extension.pybindings.portable_lib")
    inspector = require("executorch.devtools")
    module = portable._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    x = torch.randn(1, 3, 224, 224)
    for _ in range(calls):
        module.forward([x])
    module.write_etdump_result_to_file(str(dump))
    ms = Counter()
    for block in inspector.Inspector(etdump_path=str(dump)).event_blocks:
        for event in block.events:
            if event.perf_data is None:
                continue
            if event.name == "Method::execute":
                ms[CALL] = event.perf_data.p50
            elif not event.name.startswith(NOT_OPERATORS):
                ms[kind(event.name)] += event.perf_data.p50
    return ms


def table(ms: dict, models: list[str]) -> str:
    head = ["kind"] + [f"{m} {p}" for m in models for p in ("fp32", "int8")]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for k in (*KINDS, CALL):
        cells = []
        for m in models:
            fp32, int8 = ms.get((m, "executorch", k), 0.0), ms.get((m, "executorch-int8", k), 0.0)
            cells += [f"{fp32:.2f}", f"{int8:.2f}" + (f" ({fp32 / int8:.2f}x)" if int8 > 0 else "")]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"],
                   choices=[m for m in list_models() if not is_detector(m)])
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    portable = require("executorch.extension.pybindings.portable_lib")
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name in args.models:
            model = create_model(name).eval()
            for backend in ("executorch", "executorch-int8"):
                print(f"{name}: exporting {backend} ...", file=sys.stderr, flush=True)
                files.append((name, backend, export_for_backend(backend, model, Config(name), tmp).path))
        for threads in args.threads:
            portable._unsafe_reset_threadpool(threads)
            rounds = defaultdict(list)
            for r in range(args.rounds):
                for name, backend, path in (files if r % 2 == 0 else files[::-1]):
                    for k, v in profile(path, args.calls, Path(tmp) / "etdump.etdp").items():
                        rounds[(name, backend, k)].append(v)
            print(f"\n{threads} thread(s), ms: medians over {args.rounds} rounds of each operator's median "
                  f"over {args.calls} calls, summed by kind\n")
            print(table({key: statistics.median(v) for key, v in rounds.items()}, args.models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
