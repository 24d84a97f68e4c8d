import os

import pytest
import torch
from datasets import fake_fashion_mnist

# Tests run two workers on two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
