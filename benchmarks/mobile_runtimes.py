"""Phone runtimes against the server ones: latency and file size of every backend, and int8 accuracy.

    .venv/bin/python benchmarks/mobile_runtimes.py --threads 1 2 --repeats 30 \\
        --checkpoint runs/fmnist/best.pt --data fashion-mnist --out runs/mobile

Latency (the docs/deploy.md table): V1, V2, V3-Large and V3-Small at width 1.0, 224x224, batch 1,
random weights, on every backend of ``mobilenets bench`` (``--backends`` for fewer) at each thread
count, plus the reference peer. Each exported backend's file is written once (int8 calibrated on
random batches, as ``mobilenets bench`` does) and timed in a fresh process per thread count
(``bench.time_exported``); the PyTorch backends run through ``bench.time_backend``. Then, per
precision, the best mobile path (ExecuTorch, LiteRT) against the best server path (ONNX Runtime,
OpenVINO), and each mobile runtime's int8 speed-up over its fp32.

Accuracy (with ``--checkpoint``): the checkpoint exported to ExecuTorch and LiteRT, fp32 and int8
(calibrated on ``--calib-size`` training images of ``--data``), each evaluated on the test split in
its runtime, against the checkpoint in PyTorch.

Prints Markdown tables (and writes them, with the raw numbers as JSON, under ``--out``); asserts
nothing. Timings depend on the machine and what else runs on it: quote them with both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from int8_choice import accuracy

from mobilenets import create_model
from mobilenets.bench import BACKENDS, Config, Timing, check_backends, median_timing, time_backend, time_exported
from mobilenets.bench.worker import export_for_backend
from mobilenets.evaluate import evaluate_data
from mobilenets.export import export_model, load_source
from mobilenets.files import atomic_write
from mobilenets.quantize import calibration_batches

MODELS = {"mobilenet_v1": "V1", "mobilenet_v2": "V2", "mobilenet_v3_large": "V3-Large",
          "mobilenet_v3_small": "V3-Small"}
MOBILE = ("executorch", "executorch-int8", "litert", "litert-int8")
SERVER = ("ort", "ort-int8", "openvino", "openvino-bf16", "openvino-int8")
ACCURACY_VARIANTS = (("executorch", False), ("executorch", True), ("tflite", False), ("tflite", True))


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure_latency(models, backends, threads, repeats, rounds, files: Path) -> list[dict]:
    """One row per (round, model, backend, threads): median ms, file size.

    Each file is exported once; then every round times every backend again, in the reverse order
    every other round, so that a host whose speed drifts during the run slows all backends alike.
    """
    jobs = []  # (model, backend, timer, size)
    for model_name in models:
        config = Config(model_name)
        model = create_model(model_name).eval()
        for backend in (*backends, "peer"):
            # openvino-bf16 differs from openvino only in the compile-time hint: it runs in bench's worker
            if backend in BACKENDS and BACKENDS[backend].exported and backend != "openvino-bf16":
                say(f"{model_name}: exporting {backend} ...")
                result = export_for_backend(backend, model, config, files)
                jobs.append((model_name, backend, lambda t, path=result.path: time_exported(path, 1, threads=t,
                                                                                             repeats=repeats),
                             result.size_bytes))
            else:
                jobs.append((model_name, backend, lambda t, b=backend, c=config: time_backend(
                    b, [c], threads=t, repeats=repeats, warmup=3)[0], None))
    rows = []
    for r in range(rounds):
        for model_name, backend, timer, size in (jobs if r % 2 == 0 else jobs[::-1]):
            for t in threads:
                say(f"round {r + 1}/{rounds}, {model_name}: timing {backend} with {t} thread(s) ...")
                timing = timer(t)
                rows.append({"round": r, "model": model_name, "backend": backend, "threads": t,
                             "available": timing.available, "reason": timing.reason, "median_ms": timing.median_ms,
                             "p90_ms": timing.p90_ms, "size_bytes": size if size is not None else timing.size_bytes,
                             "label": timing.label})
    return rows


def medians(rows: list[dict]) -> list[dict]:
    """One row per (model, backend, threads), its rounds combined by ``bench.median_timing``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["backend"], r["threads"]), []).append(r)
    out = []
    for runs in groups.values():
        combined = median_timing([Timing(r["backend"], Config(r["model"]), r["available"], median_ms=r["median_ms"],
                                         p90_ms=r["p90_ms"]) for r in runs])
        out.append({**runs[0], "available": combined.available, "median_ms": combined.median_ms,
                    "p90_ms": combined.p90_ms})
    return out


def latency_table(rows: list[dict], models, threads) -> str:
    cols = [(m, t) for m in models for t in threads]
    head = "| backend | precision | " + " | ".join(f"{MODELS[m]} {t}T ms" for m, t in cols)
    head += " | " + " | ".join(f"{MODELS[m]} MB" for m in models) + " |"
    lines = [head, "|" + "---|" * 2 + "---:|" * (len(cols) + len(models))]
    index = {(r["model"], r["backend"], r["threads"]): r for r in rows}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        cells = []
        for m, t in cols:
            r = index[(m, backend, t)]
            cells.append(f"{r['median_ms']:.2f}" if r["available"] else "n/a")
        sizes = [index[(m, backend, threads[0])]["size_bytes"] for m in models]
        precision = BACKENDS[backend].precision if backend in BACKENDS else "fp32 (peer)"
        lines.append(f"| {backend} | {precision} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{s / 1e6:.2f}" if s else "-" for s in sizes) + " |")
    return "\n".join(lines)


def fastest(ms: dict, model: str, threads: int, backends, precision: str) -> tuple[float, str] | None:
    """(median ms, backend) of the fastest of ``backends`` at ``precision``, or None."""
    found = [(ms[(model, b, threads)], b) for b in backends
             if (model, b, threads) in ms and BACKENDS[b].precision == precision]
    return min(found, default=None)


def targets(rows: list[dict], models, threads) -> str:
    """Best mobile vs best server path per precision; int8 over fp32 in each mobile runtime.

    Every ratio is taken within a round (backends timed minutes apart, not an hour), then the
    median over the rounds is reported, with the range when there are several.
    """
    by_round: dict[int, dict] = {}
    for r in rows:
        if r["available"]:
            by_round.setdefault(r["round"], {})[(r["model"], r["backend"], r["threads"])] = r["median_ms"]
    lines = []
    for m in models:
        for t in threads:
            parts = []
            for precision in ("fp32", "int8"):
                pairs = [(fastest(ms, m, t, MOBILE, precision), fastest(ms, m, t, SERVER, precision))
                         for ms in by_round.values()]
                ratios = [server[0] / mobile[0] for mobile, server in pairs if mobile and server]
                if ratios:
                    winners = ", ".join(dict.fromkeys(f"{mobile[1]} vs {server[1]}" for mobile, server in pairs
                                                      if mobile and server))
                    parts.append(f"{precision}: best mobile over best server {_spread(ratios)} ({winners})")
            for fp32, int8 in (("executorch", "executorch-int8"), ("litert", "litert-int8")):
                ratios = [ms[(m, fp32, t)] / ms[(m, int8, t)] for ms in by_round.values()
                          if (m, fp32, t) in ms and (m, int8, t) in ms]
                if ratios:
                    parts.append(f"{int8} {_spread(ratios)} faster than {fp32}")
            lines.append(f"{MODELS[m]}, {t} thread(s): " + "; ".join(parts))
    return "\n".join(lines)


def _spread(ratios: list[float]) -> str:
    median = f"{statistics.median(ratios):.2f}x"
    return median if len(ratios) == 1 else f"{median} (median of {len(ratios)} rounds, {min(ratios):.2f} to " \
                                           f"{max(ratios):.2f})"


def measure_accuracy(checkpoint: str, data: str, calib_size: int, files: Path) -> list[dict]:
    loaded = load_source(checkpoint)
    say("evaluating the checkpoint in PyTorch ...")
    rows = [{"variant": "PyTorch fp32 (checkpoint)", "top1": evaluate_data(loaded.model, data, loaded.preprocess,
                                                                          loaded.class_names)[1].top1,
             "size_bytes": None}]
    calibration = calibration_batches(data, loaded.preprocess, calib_size)
    for fmt, int8 in ACCURACY_VARIANTS:
        kind = "int8" if int8 else "fp32"
        path = files / f"{Path(checkpoint).stem}-{kind}{'.pte' if fmt == 'executorch' else '.tflite'}"
        say(f"exporting and evaluating {fmt} {kind} ...")
        result = export_model(loaded.model, path, fmt, preprocess=loaded.preprocess, class_names=loaded.class_names,
                              calibration=calibration if int8 else None, log=lambda _: None)
        rows.append({"variant": f"{fmt} {kind}", "top1": accuracy(path, data), "size_bytes": result.size_bytes,
                     "int8_method": result.int8, "max_diff": result.max_diff,
                     "calibration_agreement": result.top1_agreement})
    return rows


def accuracy_table(rows: list[dict]) -> str:
    lines = ["| file | top-1 % | vs fp32 of its runtime (points) | MB |", "|---|---:|---:|---:|"]
    fp32 = {r["variant"].split()[0]: r["top1"] for r in rows if r["variant"].endswith("fp32")}
    for r in rows:
        delta = 100 * (r["top1"] - fp32[r["variant"].split()[0]]) if r["variant"].endswith("int8") else None
        size = "" if r["size_bytes"] is None else f"{r['size_bytes'] / 1e6:.2f}"
        delta = "" if delta is None else f"{delta:+.2f}"
        lines.append(f"| {r['variant']} | {100 * r['top1']:.2f} | {delta} | {size} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--backends", nargs="+", default=None, help="default: all of mobilenets bench's")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=1,
                   help="time every backend this many times, alternating the order; medians are reported")
    p.add_argument("--checkpoint", help="a Fashion-MNIST (or other) checkpoint: int8 accuracy of the mobile files")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--calib-size", type=int, default=300)
    p.add_argument("--no-latency", action="store_true", help="only the accuracy part")
    p.add_argument("--out", default="runs/mobile")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    out = Path(args.out)
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    report, raw = [], {}
    if not args.no_latency:
        rows = measure_latency(args.models, check_backends(args.backends), args.threads, args.repeats,
                               args.rounds, files)
        raw["latency"] = rows
        rounds = f", the median over {args.rounds} rounds" if args.rounds > 1 else ""
        report += [f"batch 1, 224x224, width 1.0, median of {args.repeats} (ms){rounds}, file size (MB)", "",
                   latency_table(medians(rows), args.models, args.threads), "",
                   targets(rows, args.models, args.threads)]
    if args.checkpoint:
        rows = measure_accuracy(args.checkpoint, args.data, args.calib_size, files)
        raw["accuracy"] = rows
        report += ["", f"{args.checkpoint} on the test split of {args.data}, int8 calibrated on {args.calib_size} "
                   "training images", "", accuracy_table(rows)]
    text = "\n".join(report)
    print(text)
    atomic_write(out / "mobile_runtimes.md", lambda tmp: tmp.write_text(text + "\n"))
    atomic_write(out / "mobile_runtimes.json", lambda tmp: tmp.write_text(json.dumps(raw, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
