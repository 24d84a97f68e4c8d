"""The worker side: one job (a backend on its configurations, a file, or the GEMM peak) timed in this
process; run as ``python -m mobilenets.bench.worker JOB.json RESULT.json``."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .report import BACKENDS, GEMM_SIZE, Config

WARMUP_SECONDS = 1.0


def random_vgg16():
    from torchvision.models import vgg16

    return vgg16(weights=None)  # random weights: timing needs no download


def peer_model(config: Config):
    """(label, model) of the reference implementation matching ``config``, or (reason, None)."""
    from ..registry import is_detector

    name, width = config.model, config.width_mult
    if is_detector(name):
        from ..detection.timing import peer_detector

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

    from ..export import fold_batchnorm
    from ..model import MobileNet

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

    from ..export import export_model
    from ..exported import FORMATS
    from ..preprocess import Preprocess

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

    from ..exported import runtime_forward
    from ..runtimes import ov_compile, ov_forward

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

    from ..precision import cpu_has_native_bf16

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


def run_job(job: dict) -> list[dict]:
    import torch

    threads = job["threads"]
    torch.set_num_threads(threads)
    backend = job["backend"]
    if backend == "gemm-peak":
        return [_gemm_peak(job["repeats"])]
    from ..registry import is_detector

    if backend == "file":
        return [_time_file(job)]
    from ..precision import NO_NATIVE_BF16, cpu_has_native_bf16

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
                label, model = "torchvision vgg16, random weights", random_vgg16()
            else:
                model = c.build()
            model.eval()
            x = torch.randn(c.batch_size, 3, c.input_size, c.input_size)
            size = None
            if is_detector(c.model):  # images in [0, 1]; ours and the peer take lists of them
                from ..detection.timing import detector_runner

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

    from ..exported import load_exported, read_meta

    meta = read_meta(job["path"])
    (c,) = (Config(**d) for d in job["configs"])
    forward = load_exported(job["path"], threads=job["threads"]).forward
    x = torch.randn(c.batch_size, meta.model_args["in_chans"], meta.input_size, meta.input_size)
    with torch.inference_mode():
        median, p90 = _time(lambda: forward(x), job["repeats"], job["warmup"])
    return {"available": True, "median_ms": median, "p90_ms": p90, "label": Path(job["path"]).name}


def main(argv: Sequence[str]) -> int:
    job_path, out_path = argv
    job = json.loads(Path(job_path).read_text())
    results = run_job(job)
    Path(out_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
