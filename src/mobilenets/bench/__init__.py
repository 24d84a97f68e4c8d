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
percentile are reported. Export and compilation happen before warm-up and are not timed. With
``rounds`` > 1 the backends and the peer are timed that many times, in the reverse order every
other round, and each reports its medians over the rounds (a shared host's speed drifts).

The package: ``report.py`` (backends, configurations, timings, the report), ``run.py`` (the parent
side), ``worker.py`` (the process that times; not imported here, so that
``python -m mobilenets.bench.worker`` runs it fresh), ``studies.py`` (the paper's comparisons).
"""

from .report import BACKENDS, Backend, BenchReport, Config, Peak, Timing
from .run import (
    check_backends,
    check_config,
    default_threads,
    higher_peak,
    measure_peak,
    median_timing,
    run_bench,
    run_worker,
    time_backend,
    time_exported,
)
from .studies import ConvComparison, format_sweep, run_compare_conv, run_sweep, sweep_configs, write_sweep

__all__ = [
    "BACKENDS", "Backend", "BenchReport", "Config", "ConvComparison", "Peak", "Timing", "check_backends",
    "check_config", "default_threads", "format_sweep", "higher_peak", "measure_peak", "median_timing", "run_bench",
    "run_compare_conv", "run_sweep", "run_worker", "sweep_configs", "time_backend", "time_exported", "write_sweep",
]
