import os
import signal
import time

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from exports import SIZE, eval_json, export, leftovers, small_model

import mobilenets
from mobilenets import export as ex
from mobilenets.exported import FORMATS, exported_format, load_exported, read_meta
from mobilenets.preprocess import Preprocess
from mobilenets.quantize import calibration_batches

ALL_MODELS = list(mobilenets.MODELS)  # classifiers (detectors: test_detection_train.py)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fold_batchnorm_matches_eval_model(name):
    model = small_model(name)
    folded = ex.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < 1e-5


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_export_matches_pytorch_at_any_batch(tmp_path, name, fmt):
    model = small_model(name)
    path = tmp_path / f"m{FORMATS[fmt].suffixes[0]}"
    result = export(model, path, fmt)
    assert result.max_diff < ex.FP32_TOLERANCE and result.int8 is None
    assert all(p.is_file() for p in result.files)
    assert leftovers(tmp_path) == sorted(p.name for p in result.files)  # no temporary files left
    forward, pre, names = load_exported(path)
    assert pre == Preprocess.imagenet(SIZE) and names == [f"c{i}" for i in range(10)]
    x = torch.randn(5, 3, SIZE, SIZE)  # a batch size the export never saw
    with torch.no_grad():
        assert (forward(x) - model(x)).abs().max() < ex.FP32_TOLERANCE
    if fmt == "onnx":
        opset, ops = ex.onnx_ops(path)
        assert opset >= 14
        if name.startswith("mobilenet_v3"):
            assert {"HardSwish", "HardSigmoid"} <= ops  # standard ONNX ops, no custom domain
        assert "BatchNormalization" not in ops


def test_the_tolerance_grows_with_the_logits(tmp_path):
    # A trained classifier's logits reach 10 to 50, where float32 rounding alone passes 1e-4.
    model = small_model("mobilenet_v1")
    with torch.no_grad():
        model.classifier.weight.mul_(1000)
        largest = model(torch.randn(3, 3, SIZE, SIZE)).abs().max().item()
    assert largest > 10
    result = export(model, tmp_path / "m.onnx", "onnx")
    assert result.limit == pytest.approx(ex.FP32_TOLERANCE * largest, rel=0.5)
    assert result.max_diff <= result.limit


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small"])
def test_torch_formats(tmp_path, name, fmt):
    model = small_model(name)
    path = tmp_path / f"m{FORMATS[fmt].suffixes[0]}"
    result = export(model, path, fmt)
    assert result.max_diff < ex.FP32_TOLERANCE
    assert exported_format(path) == fmt
    forward, _, names = load_exported(path)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (forward(x) - model(x)).abs().max() < ex.FP32_TOLERANCE
    assert names[-1] == "c9"
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, 64, 64\)"):
        forward(torch.randn(1, 3, 32, 32))


def test_grey_model_metadata_round_trip(tmp_path):
    model = small_model("mobilenet_v1", in_chans=1, num_classes=3)
    pre = Preprocess(28, 28, (0.286,), (0.353,), SIZE)
    ex.export_model(model, tmp_path / "g.xml", "openvino", preprocess=pre, class_names=["x", "y", "z"])
    meta = read_meta(tmp_path / "g.xml")
    assert meta.model_args["in_chans"] == 1 and meta.input_size == SIZE
    assert load_exported(tmp_path / "g.xml").preprocess == pre


# --------------------------------------------------------------------------- int8 and eval


def test_calibration_batches_use_the_model_preprocessing(folder):
    batches = calibration_batches(str(folder), Preprocess.imagenet(SIZE), size=20, batch_size=8)
    assert [b.shape for b in batches] == [(8, 3, SIZE, SIZE), (8, 3, SIZE, SIZE), (4, 3, SIZE, SIZE)]
    assert batches[0].dtype == torch.float32


def test_calibration_takes_a_plain_folder_and_says_when_it_has_fewer_images(folder, tmp_path, capfd):
    flat = tmp_path / "photos"
    flat.mkdir()
    for i, path in enumerate(sorted((folder / "train" / "bright").glob("*.png"))[:5]):
        (flat / f"{i}.png").write_bytes(path.read_bytes())
    batches = calibration_batches(str(flat), Preprocess.imagenet(SIZE), size=20, batch_size=8)
    assert [b.shape for b in batches] == [(5, 3, SIZE, SIZE)]
    assert "calibrating on 5 images" in capfd.readouterr().err


def test_eval_of_an_exported_model_matches_the_checkpoint(tmp_path, capsys, folder, checkpoint):
    path = tmp_path / "m.xml"
    code, out, err = run_cli(capsys, "export", "--checkpoint", checkpoint, "--format", "openvino", "--out", path)
    assert code == 0, err
    assert "max abs difference from PyTorch" in out
    exported, original = eval_json(capsys, tmp_path, path, folder), eval_json(capsys, tmp_path, checkpoint, folder)
    assert exported["top1"] == original["top1"] and exported["count"] == original["count"] == 12
    assert abs(exported["loss"] - original["loss"]) < 1e-4


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("openvino", ".xml")])
def test_int8_export_and_eval(tmp_path, capsys, folder, checkpoint, fmt, suffix):
    path = tmp_path / f"int8{suffix}"
    code, out, err = run_cli(capsys, "export", "--checkpoint", checkpoint, "--format", fmt, "--out", path,
                             "--int8", "--calib-data", folder, "--calib-size", "24")
    assert code == 0, err
    assert "int8" in out and "calibration images" in out
    meta = read_meta(path)
    assert meta.int8 and meta.class_names == ("bright", "dark")
    if fmt == "onnx":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ex.onnx_ops(path)[1]
    assert eval_json(capsys, tmp_path, path, folder)["count"] == 12


def test_export_with_model_name(tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v3_small", "--width-mult", "0.25",
                           "--num-classes", "5", "--in-chans", "1", "--input-size", "48",
                           "--format", "exported-program", "--out", tmp_path / "v3.pt2")
    assert code == 0, err
    forward, pre, names = load_exported(tmp_path / "v3.pt2")
    assert forward(torch.zeros(2, 1, 48, 48)).shape == (2, 5) and pre.channels == 1 and len(names) == 5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["--format", "tensorrt", "--out", "{tmp}/m.plan"], "unknown format 'tensorrt'; known formats: onnx"),
        (["--format", "onnx", "--out", "{tmp}/m.xml"], "--format onnx writes .onnx files"),
        (["--format", "onnx", "--out", "{tmp}/missing/m.onnx"], "does not exist"),
        (["--format", "torchscript", "--out", "{tmp}/m.ts", "--int8", "--calib-data", "x"],
         "--int8 is available for --format onnx, openvino, executorch and tflite"),
        (["--format", "onnx", "--out", "{tmp}/m.onnx", "--int8"], "--int8 needs --calib-data"),
    ],
)
def test_export_errors_before_any_work(tmp_path, capsys, argv, pattern):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v1", *argv)
    assert_one_line_error(code, err, pattern)
    assert leftovers(tmp_path) == []


def test_export_to_a_folder_fails(tmp_path, capsys):
    (tmp_path / "m.onnx").mkdir()
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v1", "--format", "onnx",
                           "--out", tmp_path / "m.onnx")
    assert_one_line_error(code, err, "is a folder")


def test_mismatching_checkpoint(tmp_path, capsys):
    model = small_model("mobilenet_v1", width=0.25)
    path = tmp_path / "bad.pt"
    state = {"model": model.state_dict(), "model_args": {**model.args.to_dict(), "width_mult": 0.5},
             "class_names": [str(i) for i in range(10)]}
    torch.save(state, path)
    code, _, err = run_cli(capsys, "export", "--checkpoint", path, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert_one_line_error(code, err, "does not fit mobilenet_v1 (width_mult=0.5")
    assert leftovers(tmp_path) == ["bad.pt"]


def test_missing_runtime_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **kw):
        if name.startswith("openvino"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr("mobilenets.runtimes.importlib.import_module", fake)
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v1", "--format", "openvino",
                           "--out", tmp_path / "m.xml")
    assert_one_line_error(code, err, "openvino is not installed: pip install 'mobilenets[deploy]'")


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "FP32_TOLERANCE", -1.0)  # no export can pass
    with pytest.raises(ValueError, match="verification failed: the openvino export differs"):
        export(small_model("mobilenet_v3_small"), tmp_path / "m.xml", "openvino")
    assert leftovers(tmp_path) == []


def test_not_an_exported_model(tmp_path, capsys, checkpoint):
    assert exported_format(checkpoint) is None
    with pytest.raises(ValueError, match="not an exported model"):
        load_exported(checkpoint)
    (tmp_path / "junk.onnx").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        load_exported(tmp_path / "junk.onnx")


def test_sigterm_during_an_export_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    weights = tmp_path / "w.pt"
    mobilenets.save_weights(small_model("mobilenet_v1"), weights)
    (tmp_path / "out").mkdir()
    write = ex._write

    def terminated_while_writing(*args, **kwargs):
        meta = write(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, halfway through the export
        time.sleep(5)  # the handler interrupts this
        return meta

    monkeypatch.setattr(ex, "_write", terminated_while_writing)
    handler = signal.getsignal(signal.SIGTERM)
    code, _, err = run_cli(capsys, "export", "--model", "mobilenet_v1", "--width-mult", "0.25", "--weights", weights,
                           "--num-classes", "10", "--input-size", SIZE, "--format", "onnx",
                           "--out", tmp_path / "out" / "m.onnx")
    assert code == 128 + signal.SIGTERM and "terminated" in err
    assert leftovers(tmp_path / "out") == []  # no temporary folder, no partial file
    assert signal.getsignal(signal.SIGTERM) is handler  # the command's own handler is gone
