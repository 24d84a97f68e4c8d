"""The benchmark's plumbing (no timing is asserted: speed is measured by benchmarks/, not tested)."""

import csv
import json

import pytest
from cli_helpers import assert_one_line_error, run_cli

from mobilenets import bench
from mobilenets.bench.worker import run_job
from mobilenets.precision import cpu_has_native_bf16


def test_bench_json_shape(capsys):
    # a real run, cut to the bone: one backend, one timed call, tiny model (peer and GEMM peak included)
    code, out, err = run_cli(capsys, "bench", "--model", "mobilenet_v2", "--width-mult", "0.25", "--input-size", "32",
                             "--threads", "1", "--backends", "eager", "--repeats", "1", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"config", "threads", "macs", "params", "peer", "peak", "results", "best"}
    assert data["config"] == {"model": "mobilenet_v2", "width_mult": 0.25, "input_size": 32, "batch_size": 1,
                              "reduced_tail": False}
    (row,) = data["results"]
    assert row["backend"] == "eager" and row["available"], row
    assert row["median_ms"] > 0 and row["p90_ms"] >= row["median_ms"] and row["images_per_s"] > 0
    assert row["speedup_vs_eager"] == 1.0 and row["gmacs_per_s"] > 0
    assert data["peer"]["available"] and "torchvision mobilenet_v2" in data["peer"]["label"]
    assert row["speedup_vs_peer"] > 0
    assert data["peak"]["fp32_gflops"] > 0
    if cpu_has_native_bf16():
        assert data["peak"]["bf16_gflops"] > 0
    else:  # emulated bf16 is not measured as a peak
        assert data["peak"]["bf16_gflops"] is None
    assert data["best"]["fp32"]["backend"] == "eager" and 0 < data["best"]["fp32"]["fraction_of_peak"]
    assert data["best"]["int8"] is None


def test_detectors_are_timed_with_their_post_processing():
    config = bench.Config("ssdlite_mobilenet_v3_small", 0.25, 96, reduced_tail=True)
    report = bench.run_bench(config, ["eager", "ort", "compile"], threads=1, repeats=1, peak=False)
    eager, ort, compile_ = report.results
    assert eager.available and ort.available and ort.size_bytes > 0, (eager, ort)
    assert not compile_.available and "detectors are timed on eager and ort" in compile_.reason
    assert not report.peer.available and "ssdlite320_mobilenet_v3_large" in report.peer.reason
    assert report.macs > 0


def test_bench_detectors_see_background_as_a_trained_detector_does():
    import torch

    from mobilenets.detection.timing import peer_detector

    label, peer = peer_detector("ssdlite_mobilenet_v3_large", 1.0, 320, True)
    ours = bench.Config("ssdlite_mobilenet_v3_large", 1.0, 320, reduced_tail=True).build()
    images = [torch.rand(3, 320, 320)]
    with torch.no_grad():
        for model in (ours, peer):  # the background takes 99 %: no class passes the 0.001 threshold
            logits = model.head(list(model.backbone(torch.rand(1, 3, 320, 320)).values()))["cls_logits"]
            assert torch.allclose(logits.softmax(-1)[..., 0], torch.tensor(0.99), atol=1e-3)
            assert len(model(images)[0]["boxes"]) == 0
    assert "torchvision ssdlite320" in label


@pytest.mark.parametrize("backend", ["bf16", "openvino-bf16"])
def test_bf16_backends_are_unavailable_without_native_bf16(monkeypatch, backend):
    monkeypatch.setattr("mobilenets.precision.cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # the worker runs in this test's process
    job = {"threads": 1, "backend": backend, "configs": [{"model": "mobilenet_v1", "input_size": 32}] * 2,
           "repeats": 1, "warmup": 1}
    results = run_job(job)
    assert len(results) == 2 and not any(r["available"] for r in results)
    assert all("no native bf16" in r["reason"] for r in results)


def test_unknown_backend_lists_the_known_ones(capsys):
    code, _, err = run_cli(capsys, "bench", "--model", "mobilenet_v1", "--backends", "eager", "tensorrt")
    assert_one_line_error(code, err, "unknown backend 'tensorrt'; known backends: eager, channels_last, compile")
    code, _, err = run_cli(capsys, "sweep", "--backends", "eager,tpu")
    assert_one_line_error(code, err, "unknown backend 'tpu'")


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["bench"], "bench needs --model NAME"),
        (["bench", "--model", "resnet50"], "unknown model 'resnet50'"),
        (["bench", "--model", "mobilenet_v1", "--input-size", "16"], "too small"),
        (["bench", "--model", "mobilenet_v1", "--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bench_argument_errors(capsys, argv, pattern):
    assert_one_line_error(*run_cli(capsys, *argv)[::2], pattern)


def test_backend_names_accept_commas():
    assert bench.check_backends(["eager,ort", "openvino", "ort"]) == ("eager", "ort", "openvino")
    assert bench.check_backends(None) == tuple(bench.BACKENDS)


def test_missing_runtime_is_reported_not_raised(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name.startswith(("onnx", "openvino")):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr("mobilenets.runtimes.importlib.import_module", fake)
    job = {"backend": "openvino", "configs": [{"model": "mobilenet_v1", "width_mult": 0.25, "input_size": 32}],
           "threads": 1, "repeats": 1, "warmup": 0, "workdir": str(tmp_path)}
    (result,) = run_job(job)
    assert result == {"available": False, "reason": "openvino is not installed: pip install 'mobilenets[deploy]'"}


def test_worker_failure_becomes_a_reason(monkeypatch):
    monkeypatch.setattr("mobilenets.bench.run.run_worker",
                        lambda job, threads: [{"available": False, "reason": "boom"}])
    configs = bench.sweep_configs()
    timings = bench.time_backend("eager", configs, threads=1, repeats=1, warmup=0)
    assert len(timings) == 16 and all(not t.available and t.reason == "boom" for t in timings)


def fake_timings(backend, configs, *, threads, repeats, warmup):
    # latency proportional to an invented per-model cost: enough to check the arithmetic
    cost = {"mobilenet_v1": 1.0, "mobilenet_v1_conv": 4.0, "vgg16": 20.0}
    return [bench.Timing(backend, c, True, median_ms=cost[c.model] * c.width_mult * c.input_size / 10,
                         p90_ms=cost[c.model] * c.input_size / 5) for c in configs]


def test_compare_conv_ratios(monkeypatch):
    monkeypatch.setattr("mobilenets.bench.studies.time_backend", fake_timings)
    result = bench.run_compare_conv(threads=1)
    rows = {r["model"]: r for r in result.ratios()}
    assert rows["mobilenet_v1_conv"]["macs_ratio"] == pytest.approx(4866 / 569, rel=0.01)  # V1 Table 4
    assert rows["vgg16"]["macs_ratio"] == pytest.approx(15470 / 569, rel=0.01)  # torchvision's VGG-16 count
    assert rows["mobilenet_v1_conv"]["measured_speedup"] == pytest.approx(4.0)
    assert "8.55x" in result.format()


def test_sweep_writes_csv_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("mobilenets.bench.studies.time_backend", fake_timings)
    code, out, err = run_cli(capsys, "sweep", "--backends", "eager", "ort", "--out", tmp_path / "sweep",
                             "--threads", "1")
    assert code == 0, err
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32 and {r["backend"] for r in rows} == {"eager", "ort"}
    assert {(float(r["width_mult"]), int(r["input_size"])) for r in rows} == {
        (a, s) for a in (1.0, 0.75, 0.5, 0.25) for s in (224, 192, 160, 128)
    }
    macs = {(r["width_mult"], r["input_size"]): int(r["macs"]) for r in rows}
    assert round(macs[("1.0", "224")] / 1e6) == 569 and round(macs[("0.25", "224")] / 1e6) == 41  # V1 Table 6
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000
    assert "wrote" in out


def test_report_picks_the_best_path_per_precision():
    c = bench.Config("mobilenet_v1")
    results = (
        bench.Timing("eager", c, True, median_ms=30.0, p90_ms=31.0),
        bench.Timing("openvino", c, True, median_ms=10.0, p90_ms=11.0),
        bench.Timing("openvino-int8", c, True, median_ms=5.0, p90_ms=6.0),
        bench.Timing("ort", c, False, reason="not installed"),
    )
    peer = bench.Timing("peer", c, True, median_ms=40.0, p90_ms=41.0, label="timm")
    report = bench.BenchReport(c, 2, 10, 569_000_000, 4_200_000, results, peer, bench.Peak(200.0, 400.0))
    assert report.best("fp32").backend == "openvino" and report.best("int8").backend == "openvino-int8"
    assert report.speedup(report.best("fp32"), peer) == 4.0
    assert report.fraction_of_peak(report.best("fp32")) == pytest.approx(2 * 569e6 / 10e-3 / 200e9)
    text = report.format()
    assert "unavailable: not installed" in text and "best int8 path vs peer: openvino-int8 8.00x" in text


def test_rounds_alternate_the_order_and_report_medians(monkeypatch, capsys):
    # each call is 1 ms slower than the one before (a host slowing down); "ort" is unavailable once
    calls = []

    def drifting(backend, configs, *, threads, repeats, warmup):
        calls.append(backend)
        ms = float(len(calls))
        if backend == "ort" and len(calls) == 2:
            return [bench.Timing(backend, configs[0], False, reason="busy")]
        return [bench.Timing(backend, configs[0], True, median_ms=ms, p90_ms=ms + 0.5)]

    monkeypatch.setattr("mobilenets.bench.run.time_backend", drifting)
    report = bench.run_bench(bench.Config("mobilenet_v1", 0.25, 32), ["eager", "ort"], threads=1, repeats=20,
                             rounds=3, peak=False)
    assert calls == ["eager", "ort", "peer", "peer", "ort", "eager", "eager", "ort", "peer"]
    eager, ort = report.results
    assert eager.median_ms == 6.0 and eager.p90_ms == 6.5  # rounds at 1, 6 and 7 ms
    assert ort.median_ms == 6.5 and ort.available  # 5 and 8 ms: the unavailable round left out
    assert report.peer.median_ms == 4.0 and report.rounds == 3
    assert "20 timed runs each per round, 3 rounds (their medians shown)" in report.format()
    assert report.to_dict()["rounds"] == 3
    with pytest.raises(ValueError, match="--rounds must be at least 1"):
        bench.run_bench(bench.Config("mobilenet_v1"), ["eager"], threads=1, rounds=0)
    code, _, err = run_cli(capsys, "bench", "--compare-conv", "--rounds", "2")
    assert_one_line_error(code, err, "--compare-conv takes no rounds")


def test_higher_peak_keeps_the_faster_measurement_per_precision():
    first = bench.Peak(fp32_gflops=87.0, bf16_gflops=380.0)
    second = bench.Peak(fp32_gflops=150.0, bf16_gflops=None)
    assert bench.higher_peak(None, second) == second
    assert bench.higher_peak(first, second) == bench.Peak(fp32_gflops=150.0, bf16_gflops=380.0)
