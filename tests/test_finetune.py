"""Fine-tuning from weights of this package, torchvision or timm: re-initialised classifier, frozen
backbone, smaller backbone learning rate, and the errors a user can make."""

import json

import pytest
import torch
import torchvision
from cli_helpers import assert_one_line_error, run_cli
from datasets import image_folder
from safetensors.torch import save_file

import mobilenets
from mobilenets.finetune import freeze_backbone, is_backbone, train_mode
from mobilenets.optim import build_optimizer
from mobilenets.recipes import get_recipe
from mobilenets.run_config import make_config
from mobilenets.train import train

TINY = dict(width_mult=1.0, input_size=32, batch_size=8, epochs=1)


@pytest.fixture
def tv_v3_small(tmp_path, request):
    """torchvision's own format, 1000 classes: a ``.pth`` as torchvision downloads it, or (parametrized) the
    Hub's ``.safetensors``."""
    suffix = getattr(request, "param", ".pth")
    path = tmp_path / f"mobilenet_v3_small-1000{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


@pytest.mark.parametrize("tv_v3_small", [".pth", ".safetensors"], indirect=True)
def test_torchvision_v3_small_fine_tunes_on_a_five_class_folder(tmp_path, tv_v3_small, capsys):
    root = image_folder(tmp_path / "d", classes=5, per_class=8, size=40)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet_v3_small", "--weights", tv_v3_small,
                           "--data", root, "--out", out, "--epochs", "1", "--input-size", "32", "--batch-size", "8")
    assert code == 0, err
    assert "classifier re-initialised: 1000 -> 5 classes" in err and f"from {tv_v3_small}" in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["model_args"]["num_classes"] == 5 and ckpt["config"]["weights"] == str(tv_v3_small)
    code, out_text, _ = run_cli(capsys, "eval", "--checkpoint", out / "best.pt", "--data", root, "--json")
    assert code == 0 and json.loads(out_text)["count"] == 40


def test_frozen_backbone_stays_frozen(tmp_path, tv_v3_small):
    root = image_folder(tmp_path / "d", classes=3, per_class=8, size=40)
    cfg = make_config("mobilenet_v3_small", str(root), str(tmp_path / "run"), weights=str(tv_v3_small),
                      freeze_backbone=True, ema_decay=0.0, **{**TINY, "epochs": 2})
    train(cfg, quiet=True)
    start = mobilenets.create_model("mobilenet_v3_small", num_classes=1000)
    mobilenets.load_weights(start, tv_v3_small)
    before = start.state_dict()
    after = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["train_state"]["model"]
    backbone = [k for k in after if is_backbone(k)]
    assert backbone and all(torch.equal(after[k], before[k]) for k in backbone)  # weights and BN statistics
    assert not torch.equal(after["hidden.0.weight"], before["hidden.0.weight"])  # the head trained


def test_backbone_learning_rate_is_scaled():
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25, num_classes=3)
    opt = build_optimizer(model, get_recipe("paper").replace(backbone_lr_scale=0.1), lr=0.5)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.classifier.weight)] == 0.5
    assert by_param[id(model.stem.conv.weight)] == pytest.approx(0.05)
    assert by_param[id(model.blocks[3].pw.bn.weight)] == pytest.approx(0.05)


def test_freeze_backbone_keeps_bn_in_eval_mode():
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.25, num_classes=3)
    trainable = freeze_backbone(model)
    assert trainable == sum(p.numel() for p in model.classifier.parameters())
    train_mode(model, frozen_backbone=True)
    assert model.training and not model.blocks.training and not model.stem.training
    mean = model.blocks[0].dw.bn.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.blocks[0].dw.bn.running_mean, mean)


def test_grey_folder_from_an_rgb_file(tmp_path, tv_v3_small, capsys):
    root = image_folder(tmp_path / "d", classes=3, per_class=8, size=40, channels=1)
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet_v3_small", "--weights", tv_v3_small, "--data", root,
                           "--out", tmp_path / "run", "--epochs", "1", "--input-size", "32", "--batch-size", "8")
    assert code == 0, err
    assert "stem adapted: features.0.0.weight from 3 to 1 input channel(s) (RGB filters summed" in err


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: p / "missing.pt", [], "weights file not found"),
    (lambda p: (p / "bad.pt").write_bytes(b"garbage") and p / "bad.pt", [], "not a readable PyTorch checkpoint"),
    (lambda p: torch.save(torchvision.models.mobilenet_v3_small(), p / "whole.pt") or p / "whole.pt", [],
     "holds a pickled Python object (torchvision.models.mobilenetv3.MobileNetV3), not tensors"),
    (lambda p: torch.save(torchvision.models.mobilenet_v2().state_dict(), p / "v2.pt") or p / "v2.pt", [],
     "torchvision checkpoint does not fit mobilenet_v3_small"),
    (None, ["--freeze-backbone"], "--freeze-backbone and --backbone-lr-scale need --weights or --weights-backbone"),
    (None, ["--backbone-lr-scale", "0.1"], "need --weights or --weights-backbone FILE"),
    (None, ["--hflip", "2"], "hflip must be in [0, 1]"),
    (None, ["--pad", "-1"], "pad must be in [0, inf)"),
])
def test_user_errors_are_one_line(tmp_path, capsys, make, extra, message):
    root = image_folder(tmp_path / "d", classes=3, per_class=4, size=40)
    weights = ["--weights", make(tmp_path)] if make else []
    code, _, err = run_cli(capsys, "train", "--model", "mobilenet_v3_small", "--data", root, "--out", tmp_path / "r",
                           "--epochs", "1", *weights, *extra)
    assert_one_line_error(code, err, message)
