"""Training end to end on tiny data: outputs, resume, Ctrl-C, SIGKILL, DDP, divergence, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error
from datasets import fake_fashion_mnist, image_folder

from mobilenets.cli import main
from mobilenets.run_config import TrainingError, make_config
from mobilenets.train import train

TINY = dict(width_mult=0.25, input_size=32, batch_size=32, epochs=2, workers=0)


@pytest.fixture
def fmnist(fashion_mnist_dir):
    return fashion_mnist_dir


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_train_writes_every_output(fmnist, tmp_path):
    out = tmp_path / "run"
    summary = train(make_config("mobilenet_v1", "fashion-mnist", str(out), "fashion-mnist", **TINY), quiet=True)
    assert summary["epochs"] == 2
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "train_images_per_s", "seconds"):
        assert all(isinstance(r[key], float) for r in records), key
    assert records[-1]["val_images"] == 26  # a twelfth of the training images; the test set is for the end
    test = json.loads((out / "test.json").read_text())
    assert test["images"] == 80 and test["epoch"] in (1, 2) and summary["test"]["acc"] == test["acc"]
    ckpt = load(out / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["class_names"][9] == "Ankle boot"
    assert ckpt["model_args"]["in_chans"] == 1 and ckpt["model_args"]["num_classes"] == 10
    assert ckpt["config"]["recipe"]["name"] == "fashion-mnist"
    state = ckpt["train_state"]
    assert {"model", "optimizer", "scheduler", "ema", "rng"} <= set(state)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # nothing half-written left over


def test_learns_the_tiny_task(fmnist, tmp_path):
    # The tiny task is "where is the square": a flip would swap classes, so it is off here.
    cfg = make_config("mobilenet_v1", "fashion-mnist", str(tmp_path / "run"), "fashion-mnist",
                      **{**TINY, "epochs": 6, "ema_decay": 0.0, "hflip": 0.0, "erase": 0.0})
    summary = train(cfg, quiet=True)
    assert summary["best_val_acc"] > 0.5  # chance is 0.1


def _cli(out: Path, *extra: str, epochs: int = 4) -> list[str]:
    return [sys.executable, "-m", "mobilenets", "train", "--model", "mobilenet_v1", "--data", "fashion-mnist",
            "--recipe", "fashion-mnist", "--width-mult", "0.25", "--input-size", "32", "--batch-size", "32",
            "--epochs", str(epochs), "--seed", "3", "--out", str(out), *extra]


def _env(fmnist: Path) -> dict:
    return {**os.environ, "FASHION_MNIST_DIR": str(fmnist), "OMP_NUM_THREADS": "1"}


def _wait_for_epochs(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("training did not progress")


@pytest.fixture
def big_fmnist(tmp_path, monkeypatch):
    # enough images that an epoch takes about a second: a kill lands inside a run
    return fake_fashion_mnist(tmp_path / "fmnist-big", n_train=1600, n_test=160)


def test_sigkill_then_resume_is_bit_identical(big_fmnist, tmp_path):
    env = _env(big_fmnist)
    reference = tmp_path / "reference"
    subprocess.run(_cli(reference), env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for_epochs(killed, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = load(killed / "last.pt")  # SIGKILL at any moment leaves a loadable checkpoint
    assert 2 <= partial["epoch"] < 4 and partial["step_in_epoch"] == 0

    subprocess.run(_cli(killed, "--resume"), env=env, check=True, capture_output=True)
    a, b = load(reference / "last.pt"), load(killed / "last.pt")
    assert b["epoch"] == 4
    for part in ("model",):
        for key, tensor in a[part].items():
            assert torch.equal(tensor, b[part][key]), key
    for key, tensor in a["train_state"]["model"].items():
        assert torch.equal(tensor, b["train_state"]["model"][key]), key
    assert [h["val_acc"] for h in a["history"]] == [h["val_acc"] for h in b["history"]]


def test_ctrl_c_saves_and_resume_finishes(big_fmnist, tmp_path):
    env, out = _env(big_fmnist), tmp_path / "run"
    proc = subprocess.Popen(_cli(out, epochs=3), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_epochs(out, 1, proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "saving a checkpoint" in err and "Traceback" not in err
    ckpt = load(out / "last.pt")
    assert ckpt["epoch"] >= 1
    resumed = subprocess.run(_cli(out, "--resume", epochs=3), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert load(out / "last.pt")["epoch"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("precision", [[], ["--no-amp"]], ids=["default", "fp32"])
def test_ddp_two_processes_agree(fmnist, tmp_path, precision):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mobilenets",
           *_cli(out, *precision, epochs=2)[3:]]
    proc = subprocess.run(cmd, env=_env(fmnist), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "weights identical on all 2 processes" in proc.stderr
    assert "Grad strides do not match" not in proc.stderr  # DDP's buckets fit the gradients: no copies
    assert "batch 32," in proc.stderr and "; 2 process(es)" in proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[-1]["val_images"] == 26  # reduced over both shards
    assert json.loads((out / "test.json").read_text())["images"] == 80
    assert load(out / "last.pt")["epoch"] == 2


def test_nan_loss_stops_and_keeps_last_good_checkpoint(fmnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real = torch.nn.functional.cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 14 else loss  # 10 steps per epoch

    monkeypatch.setattr("mobilenets.tasks.F.cross_entropy", poisoned)
    cfg = make_config("mobilenet_v1", "fashion-mnist", str(out), "fashion-mnist",
                      **{**TINY, "epochs": 3, "label_smoothing": 0.0})  # one loss call per step
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last good checkpoint.*\(epoch 1\)"):
        train(cfg, quiet=True)
    assert load(out / "last.pt")["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in load(out / "last.pt")["model"].values() if t.is_floating_point())


def test_existing_run_is_not_overwritten(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "mobilenet_v1", "--data", "fashion-mnist", "--recipe", "fashion-mnist",
            "--width-mult", "0.25", "--input-size", "32", "--batch-size", "32", "--epochs", "1", "--pad", "3",
            "--out", str(out)]
    assert main(argv) == 0
    assert load(out / "last.pt")["config"]["recipe"]["pad"] == 3  # the recipe's is 1
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    assert main([*argv, "--resume", "--width-mult", "0.5"]) == 2
    assert "width_mult is 0.25" in capsys.readouterr().err
    assert main([*argv, "--resume", "--recipe", "paper"]) == 2
    assert "recipe is 'fashion-mnist'" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 2  # its 1 epoch is done
    assert "has trained 1 epochs already; give --epochs above that" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before


def test_resume_knows_the_folder_and_its_classes(folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "mobilenet_v1", "--width-mult", "0.25", "--input-size", "32", "--epochs", "1",
            "--out", str(out)]
    assert main([*argv, "--data", str(folder)]) == 0
    capsys.readouterr()
    assert main([*argv, "--data", f"{folder}/./", "--resume", "--epochs", "2"]) == 0  # the same folder
    assert load(out / "last.pt")["epoch"] == 2
    for split in ("train", "val"):
        shutil.copytree(folder / split / "dark", folder / split / "grey")
    capsys.readouterr()
    assert main([*argv, "--data", str(folder), "--resume", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "was trained on the classes ['bright', 'dark'], the data now has ['bright', 'dark', 'grey']" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_out_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        code = main(["train", "--model", "mobilenet_v1", "--data", str(tmp_path / "no-data"), "--out", str(out)])
        assert_one_line_error(code, capsys.readouterr().err, "is a file, not a folder")


def test_resume_without_checkpoint(fmnist, tmp_path, capsys):
    code = main(["train", "--model", "mobilenet_v1", "--data", "fashion-mnist", "--out", str(tmp_path / "x"),
                 "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "--resume: no checkpoint at" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "data, message",
    [
        ("/nonexistent/folder", "data folder not found"),
        ("EMPTY", "no class sub-folders"),
        ("ONECLASS", "only one class"),
    ],
)
def test_bad_data_is_one_line(tmp_path, capsys, data, message):
    if data == "EMPTY":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    elif data == "ONECLASS":
        data = str(image_folder(tmp_path / "one", classes=1, splits=("",)))
    code = main(["train", "--model", "mobilenet_v1", "--data", data, "--val-split", "0.2",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_image_folder_run_survives_a_corrupt_image(tmp_path, capfd):
    root = image_folder(tmp_path / "d", channels=3)
    (root / "train" / "class_1" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    cfg = make_config("mobilenet_v3_small", str(root), str(tmp_path / "run"), "torchvision-v3",
                      **{**TINY, "batch_size": 8})
    summary = train(cfg, quiet=True)
    assert summary["epochs"] == 2
    assert "zz_truncated.png" in capfd.readouterr().err
    assert load(tmp_path / "run" / "last.pt")["model_args"]["in_chans"] == 3


def test_eval_and_predict_from_checkpoint(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    train(make_config("mobilenet_v1", "fashion-mnist", str(out), "fashion-mnist", **TINY), quiet=True)
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", "fashion-mnist", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["top1"] <= 1 and result["count"] == 80 and len(result["per_class"]) == 10
    assert Path(result["confusion_png"]).read_bytes()[:4] == b"\x89PNG"
    assert sum(map(sum, result["confusion"])) == 80

    from PIL import Image

    from mobilenets.data import load_fashion_mnist

    image = load_fashion_mnist("test")[0][0][0].numpy()
    Image.fromarray(image).save(tmp_path / "item.png")
    assert main(["predict", "--checkpoint", str(out / "best.pt"), str(tmp_path / "item.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"}
    assert len(lines) == 6 and all(line.split("%")[1].strip() in names for line in lines[1:])


def test_eval_on_the_runs_own_validation_split_with_tta(fmnist, tmp_path, capsys):
    # seed 3: eval must carve the validation images as the run did, read from the checkpoint
    out = tmp_path / "run"
    train(make_config("mobilenet_v1", "fashion-mnist", str(out), "fashion-mnist", seed=3, amp=False,
                      ema_decay=0.0, warmup_epochs=0.0, lr=1.6, **{**TINY, "epochs": 1, "batch_size": 8}), quiet=True)
    # 40 steps of 8 at a real learning rate, no warm-up, no EMA: the model learns the task (validation top-1
    # about 50 %), so its logits depend on the image. The recipe's 10 steps of 32, all of them warm-up, left
    # the logits the same for every image and view on some CPUs (BN's running variances still near their
    # initial 1.0 shrank every difference between images)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    args = ["eval", "--checkpoint", str(out / "best.pt"), "--data", "fashion-mnist", "--split", "val", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["split"] == "val" and plain["count"] == record["val_images"] == 26 and plain["tta"] is None
    assert plain["loss"] == pytest.approx(record["val_loss"], abs=1e-4)
    assert main([*args, "--tta", "flip-shift"]) == 0
    shifted = json.loads(capsys.readouterr().out)
    assert shifted["tta"] == "flip-shift" and shifted["count"] == 26 and shifted["loss"] != plain["loss"]
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--data", "fashion-mnist", "--tta"]) == 0
    assert "on the test split of fashion-mnist with flip TTA" in capsys.readouterr().out


def test_eval_rejects_other_classes(fmnist, tmp_path, capsys):
    out = tmp_path / "run"
    train(make_config("mobilenet_v1", "fashion-mnist", str(out), "fashion-mnist", **{**TINY, "epochs": 1}), quiet=True)
    folder = image_folder(tmp_path / "d", channels=1)
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(folder)]) == 2
    assert "was trained on classes" in capsys.readouterr().err
