"""The parent side: every backend, the peer and the GEMM peak timed one after another, each in a
fresh process (``worker.py``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from .report import BACKENDS, BenchReport, Config, Peak, Timing

WORKER_TIMEOUT = 3600


def check_backends(names: Sequence[str] | None) -> tuple[str, ...]:
    """Validate backend names (also accepts comma-separated lists); ``None`` means all."""
    if not names:
        return tuple(BACKENDS)
    chosen = [n.strip() for name in names for n in name.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}; known backends: {', '.join(BACKENDS)}")
    return tuple(dict.fromkeys(chosen))


def check_config(config: Config, threads: int, repeats: int, rounds: int = 1) -> None:
    from ..model import MIN_INPUT_SIZE
    from ..registry import get_spec

    if config.model != "vgg16":
        get_spec(config.model)
    if config.input_size < MIN_INPUT_SIZE:
        raise ValueError(f"--input-size {config.input_size} is too small: MobileNets need at least {MIN_INPUT_SIZE}")
    for name, value in (("batch-size", config.batch_size), ("threads", threads), ("repeats", repeats),
                        ("rounds", rounds)):
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
                [sys.executable, "-m", "mobilenets.bench.worker", str(job_path), str(out_path)],
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
    from ..exported import read_meta

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


def median_timing(rounds: Sequence[Timing]) -> Timing:
    """One backend's rounds as one timing: the medians over the rounds of each round's median and
    90th percentile (rounds where it was unavailable left out)."""
    ran = [t for t in rounds if t.available]
    if not ran:
        return rounds[0]
    return replace(ran[0], median_ms=statistics.median(t.median_ms for t in ran),
                   p90_ms=statistics.median(t.p90_ms for t in ran))


def run_bench(
    config: Config,
    backends: Sequence[str] | None = None,
    *,
    threads: int | None = None,
    repeats: int = 30,
    warmup: int = 3,
    rounds: int = 1,
    peer: bool = True,
    peak: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time ``config`` on each backend, the peer and the GEMM peak, one process after another.

    With ``rounds`` > 1 every backend and the peer are timed that many times, in the reverse order
    every other round, and each reports the median over its rounds: on a shared host whose speed
    drifts, the backends then see the same mix of fast and slow minutes.
    """
    from ..cost import profile

    names = check_backends(backends)
    threads = default_threads() if threads is None else threads
    check_config(config, threads, repeats, rounds)
    report = profile(config.build(), config.input_size)
    say = progress or (lambda _: None)
    peak_result = None
    if peak:  # measured before and after the backends, the higher kept (see ``higher_peak``)
        say("measuring the GEMM peak ...")
        peak_result = measure_peak(threads)
    jobs = (*names, "peer") if peer else names
    runs: dict[str, list[Timing]] = {name: [] for name in jobs}
    for r in range(rounds):
        for name in jobs if r % 2 == 0 else jobs[::-1]:
            say(f"timing {'the peer' if name == 'peer' else name}"
                + (f" (round {r + 1} of {rounds})" if rounds > 1 else "") + " ...")
            runs[name] += time_backend(name, [config], threads=threads, repeats=repeats, warmup=warmup)
    results = [median_timing(runs[name]) for name in names]
    peer_timing = median_timing(runs["peer"]) if peer else None
    if peak:
        say("measuring the GEMM peak again ...")
        peak_result = higher_peak(peak_result, measure_peak(threads))
    notes = []
    if threads > default_threads():
        notes.append(f"{threads} threads on {default_threads()} CPUs: timings are oversubscribed")
    return BenchReport(config, threads, repeats, report.macs, report.params, tuple(results), peer_timing,
                       peak_result, tuple(notes), rounds)
