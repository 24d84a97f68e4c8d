"""Phone formats: ExecuTorch (.pte) and LiteRT (.tflite) verified against PyTorch, fp32 and int8, with
their metadata inside; Core ML (.mlpackage) converted; the one-line errors."""

import os
import sys

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from exports import SIZE, eval_json, export, leftovers, small_model

from mobilenets import export as ex
from mobilenets.bench.worker import run_job
from mobilenets.exported import FORMATS, exported_format, load_exported, read_meta
from mobilenets.files import replace_folder
from mobilenets.mobile import MOBILE_FORMATS, executorch_pte, litert_tflite
from mobilenets.preprocess import Preprocess

RUNTIMES = ["executorch", "tflite"]


@pytest.mark.parametrize("fmt", RUNTIMES)
def test_fp32_export_matches_pytorch(tmp_path, fmt):
    model = small_model("mobilenet_v3_small")  # hard-swish and squeeze-excite: the widest operator set
    result = export(model, tmp_path / f"v3s{FORMATS[fmt].suffixes[0]}", fmt)
    assert result.max_diff < ex.FP32_TOLERANCE and result.int8 is None
    assert leftovers(tmp_path) == [result.path.name]  # no temporary files left
    assert exported_format(result.path) == fmt
    forward, pre, names = load_exported(result.path, threads=1)
    assert pre == Preprocess.imagenet(SIZE) and names == [f"c{i}" for i in range(10)]
    x = torch.randn(5, 3, SIZE, SIZE)  # the file takes one image; a batch runs image by image
    with torch.no_grad():
        assert (forward(x) - model(x)).abs().max() < ex.FP32_TOLERANCE
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, 64, 64\)"):
        forward(torch.randn(1, 3, 32, 32))

    # What an Android or iOS app sees: the file's own interface, and the metadata it can read.
    if fmt == "executorch":
        program = executorch_pte._load_program(result.path)
        assert {"forward", executorch_pte.META_METHOD} <= set(program.method_names)
        assert tuple(program.load_method("forward").metadata.input_tensor_meta(0).sizes()) == (1, 3, SIZE, SIZE)
        with pytest.raises(ValueError, match="failed in ExecuTorch"):  # its runtime's error, as one line
            executorch_pte.forward(result.path)(torch.randn(1, 3, SIZE + 8, SIZE + 8))
        text = executorch_pte.read_meta(result.path)
    else:
        from ai_edge_litert.interpreter import Interpreter

        (inp,) = Interpreter(model_path=str(result.path)).get_input_details()
        assert list(inp["shape"]) == [1, SIZE, SIZE, 3] and inp["dtype"] == np.float32  # channels last
        text = litert_tflite.read_meta(result.path)
    meta = ex.ExportMeta.from_json(text)
    assert meta.format == fmt and meta.class_names[0] == "c0" and meta.input_size == SIZE


def test_bench_backend_exports_and_times(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # the worker runs in this test's process
    config = {"model": "mobilenet_v1", "width_mult": 0.25, "input_size": 32}
    job = {"threads": 1, "backend": "litert", "configs": [config], "repeats": 1, "warmup": 1, "workdir": str(tmp_path)}
    (result,) = run_job(job)
    assert result["available"], result
    assert result["median_ms"] > 0 and result["size_bytes"] > 0


@pytest.mark.parametrize("fmt", RUNTIMES)
def test_int8_export_eval_and_predict(tmp_path, capsys, folder, checkpoint, fmt):
    path = tmp_path / f"int8{FORMATS[fmt].suffixes[0]}"
    code, out, err = run_cli(capsys, "export", "--checkpoint", checkpoint, "--format", fmt, "--out", path,
                             "--int8", "--calib-data", folder, "--calib-size", "16")
    assert code == 0, err
    assert "int8 top-1 agrees with fp32" in out
    assert "Running" not in err and "WARNING" not in err  # the converters' progress and notices stay hidden
    meta = read_meta(path)
    assert meta.int8 == MOBILE_FORMATS[fmt].INT8_METHOD and meta.class_names == ("bright", "dark")
    exported, original = eval_json(capsys, tmp_path, path, folder), eval_json(capsys, tmp_path, checkpoint, folder)
    assert exported["count"] == original["count"] == 12
    forward, pre, _ = load_exported(path)
    images = pre.load_batch(sorted((folder / "val" / "bright").iterdir()))
    with torch.no_grad():
        reference = ex.load_source(checkpoint).model(images)
    assert (forward(images) - reference).abs().max() < 0.1 * reference.abs().max()  # int8 error, not garbage
    if fmt == "tflite":  # fully integer: the app quantizes its input with the file's scale and zero point
        from ai_edge_litert.interpreter import Interpreter

        assert Interpreter(model_path=str(path)).get_input_details()[0]["dtype"] == np.int8
    image = next((folder / "val" / "dark").iterdir())
    code, out, err = run_cli(capsys, "predict", "--checkpoint", path, "--top-k", "2", image)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(image) and {ln.split()[-1] for ln in lines[1:]} == {"bright", "dark"}


def test_coreml_is_converted_and_says_it_was_not_run(tmp_path, capsys, folder):
    path = tmp_path / "v1.mlpackage"
    code, out, err = run_cli(capsys, "export", "--model", "mobilenet_v1", "--width-mult", "0.25", "--num-classes",
                             "3", "--input-size", str(SIZE), "--format", "coreml", "--out", path)
    assert code == 0, err
    assert path.is_dir() and (path / "Manifest.json").is_file()
    assert leftovers(tmp_path) == ["data", "v1.mlpackage"]
    meta = read_meta(path)
    assert meta.format == "coreml" and len(meta.class_names) == 3 and meta.input_size == SIZE
    if sys.platform != "darwin":
        assert "not verified: Core ML cannot run a model on this OS" in out
        code, _, err = run_cli(capsys, "predict", "--checkpoint", path, next((folder / "val" / "dark").iterdir()))
        assert_one_line_error(code, err, "Core ML models run only on macOS and iOS")


def test_litert_input_is_nhwc_and_quantized_as_the_file_says():
    image = np.random.default_rng(0).normal(0, 2, (1, 3, 8, 6)).astype(np.float32)
    as_float = litert_tflite._input(image, {"dtype": np.float32})
    assert as_float.flags.c_contiguous and np.array_equal(as_float, image.transpose(0, 2, 3, 1))
    scale, zero_point = 0.0213, -7
    as_int8 = litert_tflite._input(image, {"dtype": np.int8, "quantization": (scale, zero_point)})
    expected = np.clip(np.round(image.transpose(0, 2, 3, 1) / scale) + zero_point, -128, 127).astype(np.int8)
    assert as_int8.dtype == np.int8 and as_int8.flags.c_contiguous and np.array_equal(as_int8, expected)
    assert as_int8.min() == -128 and as_int8.max() == 127  # values beyond the range are clipped, not wrapped


def test_replace_folder_swaps_whole_folders(tmp_path):
    old, new = tmp_path / "m.mlpackage", tmp_path / "new"
    old.mkdir()
    (old / "stale").write_text("old")
    new.mkdir()
    (new / "Manifest.json").write_text("new")
    replace_folder(new, old)
    assert leftovers(old) == ["Manifest.json"] and leftovers(tmp_path) == ["m.mlpackage"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--format", "tflite", "--out", "{tmp}/m.pte"], "--format tflite writes .tflite files, not m.pte"),
        (["--format", "executorch", "--out", "{tmp}/m.tflite"], "--format executorch writes .pte files"),
        (["--format", "coreml", "--out", "{tmp}/m.mlpackage", "--int8", "--calib-data", "x"],
         "--int8 is available for --format onnx, openvino, executorch and tflite"),
        (["--format", "tflite", "--out", "{tmp}/m.tflite", "--int8"], "--int8 needs --calib-data"),
    ],
)
def test_mobile_export_errors_before_any_work(tmp_path, capsys, argv, pattern):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v1", *argv)
    assert_one_line_error(code, err, pattern)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt,module", [("executorch", "executorch"), ("tflite", "litert_torch"),
                                        ("coreml", "coremltools")])
def test_missing_mobile_extra_names_it(tmp_path, capsys, monkeypatch, fmt, module):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v1", "--format", fmt,
                           "--out", tmp_path / f"m{FORMATS[fmt].suffixes[0]}")
    assert_one_line_error(code, err, f"{module} is not installed: pip install 'mobilenets[mobile]'")


@pytest.mark.parametrize("suffix,pattern", [(".pte", "is not a readable ExecuTorch program"),
                                            (".tflite", "is not a LiteRT (TFLite) model")])
def test_corrupt_mobile_file(tmp_path, capsys, folder, suffix, pattern):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(os.urandom(256))
    code, _, err = run_cli(capsys, "eval", "--checkpoint", junk, "--data", folder)
    assert_one_line_error(code, err, pattern)
    code, _, err = run_cli(capsys, "predict", "--checkpoint", junk, next((folder / "val" / "dark").iterdir()))
    assert_one_line_error(code, err, pattern)


def test_cut_tflite_file(tmp_path, capsys, folder):
    whole = export(small_model("mobilenet_v1"), tmp_path / "m.tflite", "tflite").path
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(whole.read_bytes()[:4096])  # the identifier is there, the tables it points to are not
    code, _, err = run_cli(capsys, "predict", "--checkpoint", cut, next((folder / "val" / "dark").iterdir()))
    assert_one_line_error(code, err, "cut.tflite is not a readable LiteRT (TFLite) model (truncated or corrupt")
