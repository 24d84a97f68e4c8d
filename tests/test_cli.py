import json
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import assert_one_line_error, run_cli
from PIL import Image

import mobilenets


def test_list(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "mobilenet_v3_small" in out and "4,231,976" in out


def test_cost_table(capsys):
    code, out, _ = run_cli(capsys, "cost", "mobilenet_v1", "--width-mult", "0.5", "--input-size", "160")
    assert code == 0
    assert "76,524,800" in out and "depthwise" in out


def test_cost_json(capsys):
    code, out, _ = run_cli(capsys, "cost", "mobilenet_v2", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"macs", "params", "by_type", "layers"}
    assert data["params"] == 3_504_872
    assert set(data["by_type"]) == {"conv", "depthwise", "pointwise", "fc", "other"}
    assert data["layers"][0]["name"] == "stem.conv"


def test_cost_paper(capsys):
    code, out, _ = run_cli(capsys, "cost", "--paper")
    assert code == 0
    for label in ("Conv MobileNet", "Shallow MobileNet", "0.50 MobileNet-160", "V3-Small", "Conv DW 3x3"):
        assert label in out
    assert " NO " not in out


def test_cost_paper_json(capsys):
    code, out, _ = run_cli(capsys, "cost", "--paper", "--json")
    data = json.loads(out)
    assert all(r["ok"] for r in data["rows"]) and len(data["table_2"]) == 4


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, mode in enumerate(["RGB", "L", "RGBA"]):
        arr = np.random.default_rng(i).integers(0, 255, (50, 70, 4 if mode == "RGBA" else 3), dtype=np.uint8)
        img = Image.fromarray(arr[..., :4] if mode == "RGBA" else arr[..., :3]).convert(mode)
        path = tmp_path / f"img{i}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def test_predict_with_own_weights_and_class_names(capsys, tmp_path, images):
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25, num_classes=3)
    mobilenets.save_weights(model, tmp_path / "w.pt", class_names=["cat", "dog", "fox"])
    code, out, _ = run_cli(capsys, "predict", "--model", "mobilenet_v1", "--weights", str(tmp_path / "w.pt"), *images)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == images[0] and len(lines) == 3 * 4  # path + 3 classes per image
    probs = [float(line.split("%")[0]) for line in lines[1:4]]
    assert sum(probs) == pytest.approx(100, abs=0.05)
    assert {line.split()[-1] for line in lines[1:4]} == {"cat", "dog", "fox"}


def test_predict_imagenet_names(capsys, images):
    code, out, _ = run_cli(capsys, "predict", "--model", "mobilenet_v3_small", "--input-size", "64", images[0])
    assert code == 0 and len(out.splitlines()) == 6


def test_predict_takes_folders_and_top_k(capsys, tmp_path, images):
    (tmp_path / "notes.txt").write_text("not an image")
    argv = ["predict", "--model", "mobilenet_v3_small", "--input-size", "64"]
    code, out, _ = run_cli(capsys, *argv, "--top-k", "2", str(tmp_path))
    assert code == 0 and out.splitlines()[::3] == sorted(images)  # each image once, then its 2 classes
    for k in ("0", "-1"):
        assert_one_line_error(*run_cli(capsys, *argv, "--top-k", k, images[0])[::2], "--top-k must be at least 1")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run_cli(capsys, *argv, str(tmp_path / "empty"))[::2], "no images in folder")


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["cost", "mobilenet_v9"], "unknown model 'mobilenet_v9'; known models: mobilenet_v1"),
        (["cost", "mobilenet_v1", "--width-mult", "0"], "width_mult must be"),
        (["cost", "mobilenet_v1", "--width-mult", "-0.5"], "width_mult must be"),
        (["cost", "mobilenet_v1", "--width-mult", "nan"], "width_mult must be"),
        (["cost", "mobilenet_v1", "--width-mult", "wide"], "not a number: 'wide'"),
        (["cost", "mobilenet_v1", "--num-classes", "0"], "num_classes must be"),
        (["cost", "mobilenet_v1", "--input-size", "16"], "too small"),
        (["cost"], "needs a model name"),
        (["cost", "mobilenet_v1", "--paper"], "give it without a model name"),
        (["cost", "mobilenet_v1", "--reduced-tail"], "are detector arguments; mobilenet_v1 is a classifier"),
        (["train", "--model", "ssdlite_mobilenet_v9", "--data", "train.json", "--out", "unused"],
         "unknown model 'ssdlite_mobilenet_v9'"),
        (["predict", "--model", "mobilenet_v1", "--weights", "/nonexistent.pt", "x.png"], "weights file not found"),
        (["predict", "x.png"], "either --checkpoint"),
        (["export", "--model", "mobilenet_v1", "--format", "onnx", "--out", "x.onnx", "--calib-size", "10"],
         "--calib-size is for --int8"),
    ],
)
def test_cli_errors_are_one_line(capsys, argv, pattern):
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, pattern)


def test_files_of_the_wrong_kind_are_named(capsys, tmp_path, images):
    onnx = tmp_path / "m.onnx"
    argv = ["--model", "mobilenet_v1", "--width-mult", "0.25", "--num-classes", "3", "--input-size", "64"]
    assert run_cli(capsys, "export", *argv, "--format", "onnx", "--out", onnx)[0] == 0
    cases = [
        (["export", "--checkpoint", onnx, "--format", "openvino", "--out", tmp_path / "m.xml"],
         "m.onnx is an exported model (onnx), not weights"),
        (["eval", "--checkpoint", onnx, "--data", onnx], "is a file: classifiers read fashion-mnist"),
        (["predict", "--checkpoint", tmp_path / "missing.pt", images[0]], "checkpoint not found"),
        (["eval", "--checkpoint", tmp_path, "--data", "fashion-mnist"], "is a folder"),
        (["export", "--checkpoint", onnx, *argv[:2], "--format", "onnx", "--out", tmp_path / "x.onnx"], "not both"),
    ]
    for argv, pattern in cases:
        assert_one_line_error(*run_cli(capsys, *argv)[::2], pattern)


def test_predict_missing_and_corrupt_image(capsys, tmp_path, images):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for path, pattern in [(tmp_path / "none.png", "image not found"), (bad, "cannot read image")]:
        code, _, err = run_cli(capsys, "predict", "--model", "mobilenet_v3_small", "--input-size", "64", str(path))
        assert_one_line_error(code, err, pattern)


def test_predict_wrong_architecture(capsys, tmp_path, images):
    mobilenets.save_weights(mobilenets.create_model("mobilenet_v2", width_mult=0.25), tmp_path / "v2.pt")
    code, _, err = run_cli(capsys, "predict", "--model", "mobilenet_v1", "--weights", str(tmp_path / "v2.pt"),
                           images[0])
    assert_one_line_error(code, err, "does not fit mobilenet_v1")


def test_console_script_exit_code_and_stderr():
    proc = subprocess.run(
        [sys.executable, "-m", "mobilenets", "cost", "mobilenet_v1", "--width-mult", "0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "mobilenets cost: error: width_mult must be a finite number > 0, got 0.0"
