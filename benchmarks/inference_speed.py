"""The inference speed targets, measured: our best paths against the reference peers, same run.

    .venv/bin/python benchmarks/inference_speed.py --threads 2 [--json results.json]

Targets (2 threads, 224x224; the peer is timm ``mobilenetv1_100`` for V1 and torchvision for V2
and V3-Large, eager fp32, timed in the same run as our paths):

  V1 batch 1:   best fp32 path >= 2.7x the peer;  best int8 or bf16 path >= 6x the peer
  V1 batch 32:  best throughput >= 3x the peer's
  V2, V3-Large batch 1: best path >= 2x the peer

Every backend runs in its own process, one after another (``mobilenets.bench``). The script
prints the ratios and whether each target was reached; it asserts nothing. Timings depend on
the machine and on what else runs on it: quote them with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import sys

from mobilenets.bench import Config, run_bench
from mobilenets.files import atomic_write


def ratio(report, precisions) -> tuple[str, float | None]:
    """The fastest backend among ``precisions`` and its speed-up over the peer."""
    best = [report.best(p) for p in precisions]
    best = min((t for t in best if t is not None), key=lambda t: t.median_ms, default=None)
    if best is None or report.peer is None or not report.peer.available:
        return "-", None
    return best.backend, report.peer.median_ms / best.median_ms


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--backends", nargs="+", default=None, help="default: all")
    p.add_argument("--json", help="also write every report to this JSON file")
    args = p.parse_args()

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    cases = [  # (label, config, precisions that count, target)
        ("V1 b=1, best fp32", Config("mobilenet_v1"), ("fp32",), 2.7),
        ("V1 b=1, best int8/bf16", Config("mobilenet_v1"), ("int8", "bf16"), 6.0),
        ("V1 b=32, best throughput", Config("mobilenet_v1", batch_size=32), ("fp32", "bf16", "int8"), 3.0),
        ("V2 b=1, best path", Config("mobilenet_v2"), ("fp32", "bf16", "int8"), 2.0),
        ("V3-Large b=1, best path", Config("mobilenet_v3_large"), ("fp32", "bf16", "int8"), 2.0),
    ]
    reports = {}
    for _, config, _, _ in cases:
        if config not in reports:
            progress(f"== {config}")
            repeats = args.repeats if config.batch_size == 1 else max(args.repeats // 5, 5)
            reports[config] = run_bench(config, args.backends, threads=args.threads, repeats=repeats,
                                        peak=config.batch_size == 1, progress=progress)
            print(reports[config].format(), end="\n\n", flush=True)
    print(f"{'target':<28} {'backend':<15} {'vs peer':>8} {'target':>7}  reached")
    for label, config, precisions, target in cases:
        backend, r = ratio(reports[config], precisions)
        shown = f"{r:.2f}x" if r is not None else "-"
        print(f"{label:<28} {backend:<15} {shown:>8} {target:>6.1f}x  {'yes' if r and r >= target else 'no'}")
    if args.json:
        data = [r.to_dict() for r in reports.values()]
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
