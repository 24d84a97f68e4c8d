import os

import numpy as np
import pytest
import torch
from datasets import fake_fashion_mnist
from exports import SIZE, small_model
from PIL import Image

import mobilenets
from mobilenets.kernels import build_all
from mobilenets.preprocess import Preprocess

# Tests run two workers on two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _kernels_built():
    """Builds the CPU training kernels before any test (once per machine), so no test's output holds their lines."""
    build_all()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def folder(tmp_path):
    """A tiny two-class image folder (train/ and val/): a bright and a dark class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 6)):
        for label, base in (("bright", 170), ("dark", 40)):
            d = tmp_path / "data" / split / label
            d.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return tmp_path / "data"


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint as training writes it: model args, class names and preprocessing."""
    model = small_model("mobilenet_v1", num_classes=2)
    path = tmp_path / "ckpt.pt"
    mobilenets.save_weights(model, path, class_names=["bright", "dark"],
                            preprocess=Preprocess.imagenet(SIZE).to_dict())
    return path


@pytest.fixture
def fashion_mnist_dir(tmp_path, monkeypatch):
    """A tiny stand-in for Fashion-MNIST in its real IDX format, where the package looks for it."""
    root = fake_fashion_mnist(tmp_path / "fmnist")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """A trained checkpoint (the stand-in Fashion-MNIST task) for the serving tests, made once."""
    from serving import train_tiny_classifier

    return train_tiny_classifier(tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="session")
def tiny_detector(tmp_path_factory):
    """An untrained detector checkpoint for the serving tests."""
    from serving import make_tiny_detector

    return make_tiny_detector(tmp_path_factory.mktemp("tiny-detector"))
