"""Inference latency on every backend, each timed in its own process, against a reference peer.

``run_bench`` times one model configuration on the chosen backends (``BACKENDS``) and the
matching reference implementation ("the peer": timm ``mobilenetv1_100`` for V1 at width 1.0,
torchvision for V2 and V3), plus a large fp32 and bf16 matrix multiply that stands for the
machine's measured GEMM peak. ``run_sweep`` times the 16 width x resolution combinations of V1
(paper Tables 6 and 7, Figures 4 and 5); ``run_compare_conv`` times V1 against its full-
convolution twin (paper Table 4) and VGG-16 (paper Sec. 4.1: "32 times smaller and 27 times
less compute intensive").

Isolation: every backend (and the peer, and the GEMM measurement) runs in a fresh Python
process, one after the other, with the same thread count (``torch.set_num_threads``, ONNX
Runtime ``intra_op_num_threads``, OpenVINO ``INFERENCE_NUM_THREADS``, the ExecuTorch thread pool,
the LiteRT interpreter's ``num_threads``, and the OpenMP variables).
Nothing else of the benchmark runs while one is timed, and no backend inherits another's
thread pools, caches or compiled code. Timing: warm-up (at least ``warmup`` calls and one
second), then ``repeats`` calls timed one by one with ``time.perf_counter``; median and 90th
percentile are reported. Export and compilation happen before warm-up and are not timed.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

WARMUP_SECONDS = 1.0
GEMM_SIZE = 2048  # 2 * 2048^3 = 17 GFLOP per multiply: long enough to reach the peak
WORKER_TIMEOUT = 3600


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    precision: str  # fp32, bf16 or int8
    packages: tuple[str, ...] = ()
    format: str | None = None  # the export format it runs (``export.FORMATS``), None for PyTorch itself

    @property
    def exported(self) -> bool:
        """Runs a file written by ``export.export_model`` (MobileNets only)."""
        return self.format is not None


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", "PyTorch eager, BN folded", "fp32"),
        Backend("channels_last", "PyTorch eager, BN folded, channels_last", "fp32"),
        Backend("compile", "torch.compile (inductor, frozen weights), channels_last", "fp32"),
        Backend("bf16", "PyTorch eager, bf16 autocast, channels_last", "bf16"),
        Backend("ort", "ONNX Runtime", "fp32", ("onnx", "onnxscript", "onnxruntime"), "onnx"),
        Backend("ort-int8", "ONNX Runtime, int8 QDQ per-channel", "int8", ("onnx", "onnxscript", "onnxruntime"),
                "onnx"),
        Backend("openvino", "OpenVINO, f32 precision hint", "fp32", ("openvino",), "openvino"),
        Backend("openvino-bf16", "OpenVINO, bf16 precision hint", "bf16", ("openvino",), "openvino"),
        Backend("openvino-int8", "OpenVINO, int8 (NNCF)", "int8", ("openvino", "nncf"), "openvino"),
        Backend("executorch", "ExecuTorch, XNNPACK delegate", "fp32", ("executorch",), "executorch"),
        Backend("executorch-int8", "ExecuTorch, XNNPACK int8 (PT2E)", "int8", ("executorch", "torchao"), "executorch"),
        Backend("litert", "LiteRT interpreter, XNNPACK", "fp32", ("litert_torch", "ai_edge_litert"), "tflite"),
        Backend("litert-int8", "LiteRT, full-integer int8 (PT2E)", "int8",
                ("litert_torch", "ai_edge_litert", "torchao"), "tflite"),
    )
}
SWEEP_WIDTHS = (1.0, 0.75, 0.5, 0.25)  # V1 Table 6
SWEEP_SIZES = (224, 192, 160, 128)  # V1 Table 7
DEFAULT_SWEEP_BACKENDS = ("eager", "ort", "openvino")


@dataclass(frozen=True)
class Config:
    """One model at one width, input side and batch size."""

    model: str
    width_mult: float = 1.0
    input_size: int = 224
    batch_size: int = 1
    reduced_tail: bool = False  # V3: C4-C5 halved (torchvision's SSDLite backbone)

    def build(self):
        """Our model for this configuration (a detector at ``input_size``), random weights."""
        from .registry import create_model, is_detector

        if is_detector(self.model):
            from .detection.timing import with_background_prior

            return with_background_prior(create_model(self.model, width_mult=self.width_mult,
                                                      reduced_tail=self.reduced_tail, input_size=self.input_size))
        return create_model(self.model, width_mult=self.width_mult,
                            **({"reduced_tail": True} if self.reduced_tail else {}))


@dataclass(frozen=True)
class Timing:
    """One backend on one configuration; ``available`` False says why in ``reason``."""

    backend: str
    config: Config
    available: bool
    reason: str = ""
    median_ms: float | None = None
    p90_ms: float | None = None
    label: str = ""  # what ran (e.g. the peer's name)
    size_bytes: int | None = None  # the exported file's size (exported backends)

    @property
    def images_per_s(self) -> float | None:
        return 1000 * self.config.batch_size / self.median_ms if self.median_ms else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["config"] = asdict(self.config)
        d["images_per_s"] = self.images_per_s
        return d


@dataclass(frozen=True)
class Peak:
    """Measured large-matmul throughput of this machine at the benchmark's thread count."""

    fp32_gflops: float | None
    bf16_gflops: float | None
    size: int = GEMM_SIZE


@dataclass(frozen=True)
class BenchReport:
    config: Config
    threads: int
    repeats: int
    macs: int
    params: int
    results: tuple[Timing, ...]
    peer: Timing | None
    peak: Peak | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def timing(self, backend: str) -> Timing | None:
        return next((t for t in self.results if t.backend == backend), None)

    def best(self, precision: str) -> Timing | None:
        """The fastest available backend of a precision (fp32, bf16 or int8)."""
        runs = [t for t in self.results if t.available and BACKENDS[t.backend].precision == precision]
        return min(runs, key=lambda t: t.median_ms, default=None)

    def gmacs_per_s(self, t: Timing) -> float | None:
        return self.macs * self.config.batch_size / (t.median_ms * 1e6) if t.median_ms else None

    def speedup(self, t: Timing, base: Timing | None) -> float | None:
        if not (base and base.available and t.available):
            return None
        return base.median_ms / t.median_ms

    def fraction_of_peak(self, t: Timing | None) -> float | None:
        """Achieved mult-add rate over the GEMM peak of the path's precision (int8: none measured)."""
        if t is None or self.peak is None:
            return None
        peak = {"fp32": self.peak.fp32_gflops, "bf16": self.peak.bf16_gflops}.get(BACKENDS[t.backend].precision)
        return 2 * self.gmacs_per_s(t) / peak if peak else None  # a mult-add is two flops

    def to_dict(self) -> dict:
        eager = self.timing("eager")
        rows = []
        for t in self.results:
            rows.append({
                **t.to_dict(),
                "description": BACKENDS[t.backend].description,
                "precision": BACKENDS[t.backend].precision,
                "gmacs_per_s": self.gmacs_per_s(t) if t.available else None,
                "speedup_vs_eager": self.speedup(t, eager),
                "speedup_vs_peer": self.speedup(t, self.peer),
                "fraction_of_peak": self.fraction_of_peak(t) if t.available else None,
            })
        best = {}
        for precision in ("fp32", "bf16", "int8"):
            t = self.best(precision)
            best[precision] = None if t is None else {
                "backend": t.backend,
                "median_ms": t.median_ms,
                "speedup_vs_peer": self.speedup(t, self.peer),
                "fraction_of_peak": self.fraction_of_peak(t),
            }
        return {
            "config": asdict(self.config),
            "threads": self.threads,
            "repeats": self.repeats,
            "macs": self.macs,
            "params": self.params,
            "peer": self.peer.to_dict() if self.peer else None,
            "peak": asdict(self.peak) if self.peak else None,
            "results": rows,
            "best": best,
            "notes": list(self.notes),
        }

    def format(self) -> str:
        c = self.config
        lines = [
            f"{c.model} x{c.width_mult:g} at {c.input_size}x{c.input_size}, batch {c.batch_size}, "
            f"{self.threads} thread(s), {self.repeats} timed runs each: {self.macs / 1e6:,.1f} M mult-adds, "
            f"{self.params / 1e6:.2f} M params per image",
        ]
        if self.peer is not None:
            lines.append(
                f"peer: {self.peer.label}, median {self.peer.median_ms:.2f} ms" if self.peer.available
                else f"peer: unavailable ({self.peer.reason})"
            )
        head = (f"{'backend':<15} {'precision':<9} {'median ms':>10} {'p90 ms':>9} {'images/s':>9} "
                f"{'G mult-adds/s':>13} {'vs eager':>9} {'vs peer':>8} {'file MB':>8}")
        lines += ["", head, "-" * len(head)]
        eager = self.timing("eager")
        for t in self.results:
            b = BACKENDS[t.backend]
            if not t.available:
                lines.append(f"{t.backend:<15} {b.precision:<9} unavailable: {t.reason}")
                continue
            lines.append(
                f"{t.backend:<15} {b.precision:<9} {t.median_ms:>10.2f} {t.p90_ms:>9.2f} {t.images_per_s:>9.1f} "
                f"{self.gmacs_per_s(t):>13.1f} {_ratio(self.speedup(t, eager)):>9} "
                f"{_ratio(self.speedup(t, self.peer)):>8} {_megabytes(t.size_bytes):>8}"
            )
        if self.peak is not None:
            lines += ["", (f"GEMM peak (torch.matmul {self.peak.size}^3, same threads): "
                           f"fp32 {_gflops(self.peak.fp32_gflops)}, bf16 {_gflops(self.peak.bf16_gflops)}")]
            for precision in ("fp32", "bf16"):
                t = self.best(precision)
                frac = self.fraction_of_peak(t)
                if t is not None and frac is not None:
                    lines.append(
                        f"best {precision} path: {t.backend}, {2 * self.gmacs_per_s(t):.1f} GFLOP/s = "
                        f"{frac:.1%} of the {precision} GEMM peak"
                    )
        for precision in ("fp32", "bf16", "int8"):
            t = self.best(precision)
            s = self.speedup(t, self.peer) if t else None
            if s is not None:
                lines.append(f"best {precision} path vs peer: {t.backend} {s:.2f}x")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def _megabytes(n: int | None) -> str:
    return f"{n / 1e6:.2f}" if n is not None else "-"


def _gflops(x: float | None) -> str:
    return f"{x:.1f} GFLOP/s" if x is not None else "not measured"


# --------------------------------------------------------------------------- the parent side


def check_backends(names: Sequence[str] | None) -> tuple[str, ...]:
    """Validate backend names (also accepts comma-separated lists); ``None`` means all."""
    if not names:
        return tuple(BACKENDS)
    chosen = [n.strip() for name in names for n in name.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}; known backends: {', '.join(BACKENDS)}")
    return tuple(dict.fromkeys(chosen))


def check_config(config: Config, threads: int, repeats: int) -> None:
    from .model import MIN_INPUT_SIZE
    from .registry import get_spec

    if config.model != "vgg16":
        get_spec(config.model)
    if config.input_size < MIN_INPUT_SIZE:
        raise ValueError(f"--input-size {config.input_size} is too small: MobileNets need at least {MIN_INPUT_SIZE}")
    for name, value in (("batch-size", config.batch_size), ("threads", threads), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_worker(job: dict, threads: int, timeout: float = WORKER_TIMEOUT) -> list[dict]:
    """Run one job in a fresh interpreter with ``threads`` threads; return its result records."""
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "mobilenets-inductor"))
    with tempfile.TemporaryDirectory(prefix="mobilenets-bench-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps({**job, "threads": threads, "workdir": tmp}))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "mobilenets.bench", str(job_path), str(out_path)],
                env=env, capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return [{"available": False, "reason": f"timed out after {timeout:.0f} s"}]
        if out_path.is_file():
            return json.loads(out_path.read_text())
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        return [{"available": False, "reason": f"worker failed (exit {proc.returncode}): "
                                              f"{lines[-1] if lines else 'no output'}"}]


def _timings(backend: str, configs: Sequence[Config], records: list[dict]) -> list[Timing]:
    if len(records) == 1 and len(configs) > 1:  # the worker failed as a whole
        records = records * len(configs)
    return [
        Timing(backend, c, r.get("available", False), r.get("reason", ""), r.get("median_ms"), r.get("p90_ms"),
               r.get("label", ""), r.get("size_bytes"))
        for c, r in zip(configs, records, strict=True)
    ]


def time_backend(
    backend: str, configs: Sequence[Config], *, threads: int, repeats: int, warmup: int
) -> list[Timing]:
    """Time ``backend`` on every configuration, in one fresh process."""
    job = {"backend": backend, "configs": [asdict(c) for c in configs], "repeats": repeats, "warmup": warmup}
    return _timings(backend, configs, run_worker(job, threads))


def time_exported(
    path: str | os.PathLike, batch_size: int = 1, *, threads: int | None = None, repeats: int = 30, warmup: int = 3
) -> Timing:
    """Time a file written by ``mobilenets export`` in its runtime, in a fresh process."""
    from .export import read_meta

    meta = read_meta(path)
    config = Config(meta.model_args["name"], meta.model_args["width_mult"], meta.input_size, batch_size)
    threads = default_threads() if threads is None else threads
    job = {"backend": "file", "path": str(Path(path).resolve()), "configs": [asdict(config)], "repeats": repeats,
           "warmup": warmup}
    (timing,) = _timings(f"file:{Path(path).name}", [config], run_worker(job, threads))
    return timing


def measure_peak(threads: int) -> Peak:
    records = run_worker({"backend": "gemm-peak", "configs": [], "repeats": 10, "warmup": 2}, threads)
    r = records[0] if records else {}
    return Peak(r.get("fp32_gflops"), r.get("bf16_gflops"))


def higher_peak(a: Peak | None, b: Peak) -> Peak:
    """Per precision, the higher of two measurements: a neighbour on a shared host can only slow
    a GEMM down, so the higher value is the better estimate of the peak."""
    if a is None:
        return b
    best = [max((v for v in pair if v is not None), default=None)
            for pair in ((a.fp32_gflops, b.fp32_gflops), (a.bf16_gflops, b.bf16_gflops))]
    return Peak(*best, size=a.size)


def run_bench(
    config: Config,
    backends: Sequence[str] | None = None,
    *,
    threads: int | None = None,
    repeats: int = 30,
    warmup: int = 3,
    peer: bool = True,
    peak: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time ``config`` on each backend, the peer and the GEMM peak, one process after another."""
    from .cost import profile

    names = check_backends(backends)
    threads = default_threads() if threads is None else threads
    check_config(config, threads, repeats)
    report = profile(config.build(), config.input_size)
    say = progress or (lambda _: None)
    peak_result = None
    if peak:  # measured before and after the backends, the higher kept (see ``higher_peak``)
        say("measuring the GEMM peak ...")
        peak_result = measure_peak(threads)
    results = []
    for name in names:
        say(f"timing {name} ...")
        results += time_backend(name, [config], threads=threads, repeats=repeats, warmup=warmup)
    peer_timing = None
    if peer:
        say("timing the peer ...")
        peer_timing = time_backend("peer", [config], threads=threads, repeats=repeats, warmup=warmup)[0]
    if peak:
        say("measuring the GEMM peak again ...")
        peak_result = higher_peak(peak_result, measure_peak(threads))
    notes = []
    if threads > default_threads():
        notes.append(f"{threads} threads on {default_threads()} CPUs: timings are oversubscribed")
    return BenchReport(config, threads, repeats, report.macs, report.params, tuple(results), peer_timing,
                       peak_result, tuple(notes))


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
    from .cost import profile
    from .registry import create_model

    names = check_backends(backends or ["eager"])
    threads = default_threads() if threads is None else threads
    say = progress or (lambda _: None)
    configs = [Config(m, width_mult, input_size, batch_size) for m in ("mobilenet_v1", "mobilenet_v1_conv")]
    vgg = Config("vgg16", 1.0, input_size, batch_size)
    for c in configs:
        check_config(c, threads, repeats)
    macs = {c.model: profile(create_model(c.model, width_mult=width_mult), input_size).macs for c in configs}
    macs["vgg16"] = profile(_vgg16(), input_size).macs
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
    from .cost import profile
    from .registry import create_model

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

    from .files import atomic_write
    from .plots import plot_sweep

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


# --------------------------------------------------------------------------- the worker side


def _vgg16():
    from torchvision.models import vgg16

    return vgg16(weights=None)  # random weights: timing needs no download


def peer_model(config: Config):
    """(label, model) of the reference implementation matching ``config``, or (reason, None)."""
    from .registry import is_detector

    name, width = config.model, config.width_mult
    if is_detector(name):
        from .detection.timing import peer_detector

        return peer_detector(name, width, config.input_size, config.reduced_tail)
    if name == "mobilenet_v1":
        if width != 1.0:
            return "timm has mobilenetv1_100 (width 1.0) only", None
        try:
            import timm
        except ImportError:
            return "timm is not installed: pip install 'mobilenets[dev]'", None
        return "timm mobilenetv1_100, eager fp32", timm.create_model("mobilenetv1_100", pretrained=False)
    import torchvision.models as tvm

    if name == "mobilenet_v2":
        label = f"torchvision mobilenet_v2(width_mult={width:g}), eager fp32"
        return label, tvm.mobilenet_v2(weights=None, width_mult=width)
    if name in ("mobilenet_v3_large", "mobilenet_v3_small"):
        if width != 1.0:
            return "torchvision builds V3 at width 1.0 only", None
        return f"torchvision {name}, eager fp32", getattr(tvm, name)(weights=None)
    return f"no reference implementation of {name}", None


def _time(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    """Median and 90th percentile of ``repeats`` timed calls, in ms, after warm-up."""
    start, calls = time.perf_counter(), 0
    while calls < warmup or time.perf_counter() - start < WARMUP_SECONDS:
        fn()
        calls += 1
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    p90 = statistics.quantiles(times, n=10, method="inclusive")[-1] if len(times) > 1 else times[0]
    return statistics.median(times), p90


def _torch_runner(backend: str, model, x):
    import torch

    from .export import fold_batchnorm
    from .model import MobileNet

    if isinstance(model, MobileNet):  # ours: BN folded (the peers and VGG run as they come)
        model = fold_batchnorm(model)
    model.eval()
    if backend == "eager":
        return lambda: model(x)
    channels_last = torch.channels_last
    model = model.to(memory_format=channels_last)
    x = x.contiguous(memory_format=channels_last)
    if backend == "channels_last":
        return lambda: model(x)
    if backend == "bf16":
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x)
        return run
    if backend == "compile":
        if not (shutil.which("g++") or shutil.which("c++")):
            raise RuntimeError("torch.compile (inductor) needs a C++ compiler (g++)")
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights become constants: folded, pre-packed for oneDNN
        compiled = torch.compile(model, dynamic=False)
        return lambda: compiled(x)
    raise ValueError(backend)


def export_for_backend(backend: str, model, config: Config, workdir: str | os.PathLike):
    """``model`` exported as ``backend`` runs it, into ``workdir``: the ``export.ExportResult``.

    int8 backends are calibrated on a few random batches: timing does not depend on the values
    (accuracy is measured with ``mobilenets eval`` instead).
    """
    import torch

    from .export import FORMATS, export_model
    from .preprocess import Preprocess

    spec = BACKENDS[backend]
    pre = Preprocess.imagenet(config.input_size, model.in_chans)
    shape = (8, model.in_chans, config.input_size, config.input_size)
    calibration = [torch.randn(shape) for _ in range(4)] if spec.precision == "int8" else None
    name = f"{config.model}-{config.width_mult:g}-{config.input_size}-{backend}{FORMATS[spec.format].suffixes[0]}"
    return export_model(model, Path(workdir) / name, spec.format, preprocess=pre,
                        class_names=[str(i) for i in range(model.args.num_classes)], calibration=calibration,
                        log=lambda _: None)


def _export_runner(backend: str, model, config: Config, x, workdir: Path):
    """(timed call, file size in bytes): ``model`` exported for ``backend`` and loaded in its runtime."""
    import torch

    from .export import runtime_forward
    from .runtimes import ov_compile, ov_forward

    spec = BACKENDS[backend]
    result = export_for_backend(backend, model, config, workdir)
    threads = torch.get_num_threads()
    if spec.format == "openvino":  # the precision hint is what tells openvino and openvino-bf16 apart
        forward = ov_forward(ov_compile(result.path, threads, precision="bf16" if spec.precision == "bf16" else "f32"))
    else:
        forward = runtime_forward(result.path, spec.format, threads)
    return (lambda: forward(x)), result.size_bytes


def _gemm_peak(repeats: int) -> dict:
    import torch

    from .precision import cpu_has_native_bf16

    out = {}
    dtypes = {torch.float32: "fp32_gflops"}
    if cpu_has_native_bf16():  # emulated bf16 is no peak, and takes minutes at this size
        dtypes[torch.bfloat16] = "bf16_gflops"
    for dtype, key in dtypes.items():
        a = torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=dtype)
        b = torch.randn(GEMM_SIZE, GEMM_SIZE, dtype=dtype)
        times = []
        with torch.inference_mode():
            for _ in range(repeats + 2):  # two warm-up calls
                t0 = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - t0)
        out[key] = 2 * GEMM_SIZE**3 / (min(times[2:]) * 1e9)
    return out


def _worker(job: dict) -> list[dict]:
    import torch

    threads = job["threads"]
    torch.set_num_threads(threads)
    backend = job["backend"]
    if backend == "gemm-peak":
        return [_gemm_peak(job["repeats"])]
    from .registry import is_detector

    if backend == "file":
        return [_time_file(job)]
    from .precision import NO_NATIVE_BF16, cpu_has_native_bf16

    if backend in BACKENDS and BACKENDS[backend].precision == "bf16" and not cpu_has_native_bf16():
        # OpenVINO would quietly run f32 and PyTorch would emulate: neither is a bf16 timing
        return [{"available": False, "reason": NO_NATIVE_BF16} for _ in job["configs"]]
    results = []
    for c in (Config(**d) for d in job["configs"]):
        try:
            label = BACKENDS[backend].description if backend in BACKENDS else ""
            if backend == "peer":
                label, model = peer_model(c)
                if model is None:
                    results.append({"available": False, "reason": label})
                    continue
            elif c.model == "vgg16":
                label, model = "torchvision vgg16, random weights", _vgg16()
            else:
                model = c.build()
            model.eval()
            x = torch.randn(c.batch_size, 3, c.input_size, c.input_size)
            size = None
            if is_detector(c.model):  # images in [0, 1]; ours and the peer take lists of them
                from .detection.timing import detector_runner

                x = x.sigmoid()
                run, size = detector_runner(backend, model, x, Path(job["workdir"]), threads)
            elif backend in BACKENDS and BACKENDS[backend].exported:
                run, size = _export_runner(backend, model, c, x, Path(job["workdir"]))
            else:
                run = _torch_runner("eager" if backend == "peer" else backend, model, x)
            with torch.inference_mode():
                median, p90 = _time(run, job["repeats"], job["warmup"])
            results.append({"available": True, "median_ms": median, "p90_ms": p90, "label": label,
                            "size_bytes": size})
        except (ImportError, ValueError, RuntimeError, OSError) as e:  # a missing runtime, an unsupported op
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            results.append({"available": False, "reason": reason[:300]})
    return results


def _time_file(job: dict) -> dict:
    import torch

    from .export import load_exported, read_meta

    meta = read_meta(job["path"])
    (c,) = (Config(**d) for d in job["configs"])
    forward = load_exported(job["path"], threads=job["threads"]).forward
    x = torch.randn(c.batch_size, meta.model_args["in_chans"], meta.input_size, meta.input_size)
    with torch.inference_mode():
        median, p90 = _time(lambda: forward(x), job["repeats"], job["warmup"])
    return {"available": True, "median_ms": median, "p90_ms": p90, "label": Path(job["path"]).name}


def _main(argv: Sequence[str]) -> int:
    job_path, out_path = argv
    job = json.loads(Path(job_path).read_text())
    results = _worker(job)
    Path(out_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
