"""The paper's comparisons, measured: V1 against full convolutions and VGG-16 (Table 4, Sec. 4.1),
and V1 at 16 widths x resolutions (Tables 6 and 7, Figures 4 and 5)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .report import BACKENDS, Config, Timing
from .run import check_backends, check_config, default_threads, time_backend

SWEEP_WIDTHS = (1.0, 0.75, 0.5, 0.25)  # V1 Table 6
SWEEP_SIZES = (224, 192, 160, 128)  # V1 Table 7
DEFAULT_SWEEP_BACKENDS = ("eager", "ort", "openvino")


@dataclass(frozen=True)
class ConvComparison:
    """V1 against its full-convolution twin and VGG-16: measured vs mult-add speed-ups."""

    threads: int
    macs: dict[str, int]  # model -> mult-adds per image
    timings: tuple[Timing, ...]

    def ratios(self) -> list[dict]:
        rows = []
        for t in self.timings:
            if t.config.model == "mobilenet_v1":
                continue
            base = next((b for b in self.timings if b.config.model == "mobilenet_v1" and b.backend == t.backend), None)
            measured = base.median_ms and t.median_ms and t.median_ms / base.median_ms if base else None
            rows.append({
                "model": t.config.model, "backend": t.backend, "median_ms": t.median_ms,
                "mobilenet_v1_ms": base.median_ms if base else None,
                "measured_speedup": measured or None,
                "macs_ratio": self.macs[t.config.model] / self.macs["mobilenet_v1"],
                "available": t.available, "reason": t.reason,
            })
        return rows

    def to_dict(self) -> dict:
        return {"threads": self.threads, "macs": self.macs, "timings": [t.to_dict() for t in self.timings],
                "comparisons": self.ratios()}

    def format(self) -> str:
        lines = [f"mobilenet_v1 against full convolutions, {self.threads} thread(s)"]
        for name, macs in self.macs.items():
            lines.append(f"  {name:<18} {macs / 1e6:>9,.0f} M mult-adds")
        lines.append(f"{'model':<18} {'backend':<14} {'median ms':>10} {'V1 ms':>8} {'measured':>9} {'mult-adds':>10}")
        for r in self.ratios():
            if not r["available"] or not r["measured_speedup"]:
                lines.append(f"{r['model']:<18} {r['backend']:<14} unavailable: {r['reason']}")
                continue
            lines.append(
                f"{r['model']:<18} {r['backend']:<14} {r['median_ms']:>10.2f} {r['mobilenet_v1_ms']:>8.2f} "
                f"{r['measured_speedup']:>8.2f}x {r['macs_ratio']:>9.2f}x"
            )
        lines.append("(measured: how many times faster mobilenet_v1 runs; mult-adds: how many times fewer it does; "
                     "paper: 4866 M vs 569 M = 8.55x (Table 4), VGG-16 15300 M vs 569 M = 27x (Sec. 4.1))")
        return "\n".join(lines)


def run_compare_conv(
    *, width_mult: float = 1.0, input_size: int = 224, batch_size: int = 1, backends: Sequence[str] | None = None,
    threads: int | None = None, repeats: int = 10, warmup: int = 2, progress: Callable[[str], None] | None = None,
) -> ConvComparison:
    """Time mobilenet_v1, mobilenet_v1_conv and VGG-16 (eager only; random weights) on each backend."""
    from ..cost import profile
    from ..registry import create_model
    from .worker import random_vgg16

    names = check_backends(backends or ["eager"])
    threads = default_threads() if threads is None else threads
    say = progress or (lambda _: None)
    configs = [Config(m, width_mult, input_size, batch_size) for m in ("mobilenet_v1", "mobilenet_v1_conv")]
    vgg = Config("vgg16", 1.0, input_size, batch_size)
    for c in configs:
        check_config(c, threads, repeats)
    macs = {c.model: profile(create_model(c.model, width_mult=width_mult), input_size).macs for c in configs}
    macs["vgg16"] = profile(random_vgg16(), input_size).macs
    timings: list[Timing] = []
    for name in names:
        say(f"timing {name} ...")
        timings += time_backend(name, configs + ([vgg] if not BACKENDS[name].exported else []),
                                threads=threads, repeats=repeats, warmup=warmup)
    return ConvComparison(threads, macs, tuple(timings))


def sweep_configs(batch_size: int = 1) -> list[Config]:
    return [Config("mobilenet_v1", a, s, batch_size) for a in SWEEP_WIDTHS for s in SWEEP_SIZES]


def run_sweep(
    backends: Sequence[str] | None = None, *, threads: int | None = None, repeats: int = 20, warmup: int = 3,
    batch_size: int = 1, progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Mult-adds, parameters and latency of V1 at the 16 widths x input sizes, per backend."""
    from ..cost import profile
    from ..registry import create_model

    names = check_backends(backends or DEFAULT_SWEEP_BACKENDS)
    threads = default_threads() if threads is None else threads
    configs = sweep_configs(batch_size)
    check_config(configs[0], threads, repeats)
    cost = {}
    for c in configs:
        report = profile(create_model(c.model, width_mult=c.width_mult), c.input_size)
        cost[c] = (report.macs, report.params)
    say = progress or (lambda _: None)
    rows = []
    for name in names:
        say(f"timing {name} on {len(configs)} configurations ...")
        for t in time_backend(name, configs, threads=threads, repeats=repeats, warmup=warmup):
            c = t.config
            rows.append({
                "model": c.model, "width_mult": c.width_mult, "input_size": c.input_size, "batch_size": c.batch_size,
                "macs": cost[c][0], "params": cost[c][1], "backend": name, "threads": threads,
                "available": t.available, "median_ms": t.median_ms, "p90_ms": t.p90_ms,
                "images_per_s": t.images_per_s, "reason": t.reason,
            })
    return rows


SWEEP_COLUMNS = ("model", "width_mult", "input_size", "batch_size", "macs", "params", "backend", "threads",
                 "available", "median_ms", "p90_ms", "images_per_s", "reason")


def write_sweep(rows: Sequence[dict], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``sweep.csv`` and ``sweep.png`` (latency vs mult-adds and params) in ``out_dir``, written atomically."""
    import csv
    import io

    from ..files import atomic_write
    from ..plots import plot_sweep

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, png_path = out / "sweep.csv", out / "sweep.png"
    atomic_write(csv_path, lambda tmp: tmp.write_text(buf.getvalue()))
    plot_sweep(rows, png_path, title="mobilenet_v1: width x resolution, measured")
    return csv_path, png_path


def format_sweep(rows: Sequence[dict]) -> str:
    head = (f"{'width':>5} {'size':>5} {'M mult-adds':>11} {'M params':>9} {'backend':<14} {'median ms':>10} "
            f"{'images/s':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        timing = (f"{r['median_ms']:>10.2f} {r['images_per_s']:>9.1f}" if r["available"]
                  else f"unavailable: {r['reason']}")
        lines.append(f"{r['width_mult']:>5g} {r['input_size']:>5} {r['macs'] / 1e6:>11.1f} {r['params'] / 1e6:>9.2f} "
                     f"{r['backend']:<14} {timing}")
    return "\n".join(lines)
