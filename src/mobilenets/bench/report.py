"""What a benchmark measures and how it reads: the backends, one configuration, its timings and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GEMM_SIZE = 2048  # 2 * 2048^3 = 17 GFLOP per multiply: long enough to reach the peak


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
        from ..registry import create_model, is_detector

        if is_detector(self.model):
            from ..detection.timing import with_background_prior

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
    rounds: int = 1  # every timing the median over this many rounds

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
            "rounds": self.rounds,
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
            f"{self.threads} thread(s), {self.repeats} timed runs each"
            f"{f' per round, {self.rounds} rounds (their medians shown)' if self.rounds > 1 else ''}: "
            f"{self.macs / 1e6:,.1f} M mult-adds, "
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
