"""ONNX Runtime static quantization vs NNCF on a trained checkpoint: accuracy, size, latency.

    .venv/bin/python benchmarks/int8_choice.py --checkpoint runs/fmnist/best.pt --data fashion-mnist \
        --out runs/int8 --threads 2

Exports the checkpoint four times (ONNX and OpenVINO, fp32 and int8, both int8 calibrated on the
same training images), evaluates each on the test set in its runtime, and times each at
batch 1 and 32 in its own process (``bench.time_exported``). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mobilenets.bench import default_threads, time_exported
from mobilenets.evaluate import evaluate_data
from mobilenets.export import export_model, load_source
from mobilenets.exported import load_exported
from mobilenets.quantize import calibration_batches

VARIANTS = (  # (name, format, int8)
    ("onnx fp32", "onnx", False),
    ("onnx int8 (ONNX Runtime QDQ)", "onnx", True),
    ("openvino fp32", "openvino", False),
    ("openvino int8 (NNCF)", "openvino", True),
)


def accuracy(path: Path, data: str) -> float:
    forward, pre, names = load_exported(path)
    return evaluate_data(forward, data, pre, names)[1].top1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", default="runs/int8")
    p.add_argument("--calib-size", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    threads = args.threads or default_threads()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_source(args.checkpoint)
    calibration = calibration_batches(args.data, loaded.preprocess, args.calib_size)
    rows = []
    for name, fmt, int8 in VARIANTS:
        path = out / f"model-{'int8' if int8 else 'fp32'}.{'onnx' if fmt == 'onnx' else 'xml'}"
        result = export_model(loaded.model, path, fmt, preprocess=loaded.preprocess, class_names=loaded.class_names,
                              calibration=calibration if int8 else None, log=lambda _: None)
        print(f"{name}: exported, evaluating and timing ...", file=sys.stderr, flush=True)
        rows.append({
            "variant": name,
            "path": str(path),
            "size_bytes": result.size_bytes,
            "top1": accuracy(path, args.data),
            "ms_batch1": time_exported(path, 1, threads=threads, repeats=args.repeats).median_ms,
            "ms_batch32": time_exported(path, 32, threads=threads, repeats=max(args.repeats // 5, 5)).median_ms,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.checkpoint} on {args.data}, {threads} thread(s), {len(calibration)} calibration batches "
          f"({args.calib_size} images)")
    print(f"{'variant':<30} {'top-1 %':>8} {'MB':>7} {'size':>6} {'ms b=1':>8} {'ms b=32':>8}")
    fp32 = {r["variant"].split()[0]: r for r in rows if "fp32" in r["variant"]}
    for r in rows:
        base = fp32[r["variant"].split()[0]]
        print(f"{r['variant']:<30} {100 * r['top1']:>8.2f} {r['size_bytes'] / 1e6:>7.2f} "
              f"{base['size_bytes'] / r['size_bytes']:>5.2f}x {r['ms_batch1'] or float('nan'):>8.2f} "
              f"{r['ms_batch32'] or float('nan'):>8.2f}")
    print("(size: how many times smaller than the fp32 file of the same format)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
