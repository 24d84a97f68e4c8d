"""A real ``mobilenets serve`` process on a free loopback port, and a tiny model worth serving."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import class_images, fake_fashion_mnist
from PIL import Image

START_TIMEOUT_S = 120  # importing torch and loading the model on a busy 2-core machine


@dataclass
class Server:
    """``mobilenets serve`` started with ``--port 0``; ``url`` is read from the line it prints."""

    args: list[str]
    url: str = ""
    proc: subprocess.Popen | None = None
    lines: list[str] = field(default_factory=list)

    def __enter__(self) -> Server:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mobilenets", "serve", "--port", "0", "--threads", "1", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            line = self._lines.get(timeout=START_TIMEOUT_S)
            if line is None:
                raise RuntimeError(f"the server exited at start: {''.join(self.lines)}")
            if match := re.search(r"listening on (http://\S+)", line):
                self.url = match.group(1)
                return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status once the server has drained."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return "".join(self.lines)

    def __exit__(self, *exc) -> None:
        self.stop()


def train_tiny_classifier(folder: Path) -> Path:
    """A MobileNet V1 x0.25 at 32 px trained on the stand-in Fashion-MNIST of ``datasets``
    ("where is the square", Fashion-MNIST's files and class names): a few seconds, and it gets
    the stand-in's test images right."""
    from mobilenets.run_config import make_config
    from mobilenets.train import train

    root = fake_fashion_mnist(folder / "fmnist")
    previous = os.environ.get("FASHION_MNIST_DIR")
    os.environ["FASHION_MNIST_DIR"] = str(root)
    try:
        cfg = make_config("mobilenet_v1", "fashion-mnist", str(folder / "run"), "fashion-mnist", width_mult=0.25,
                          input_size=32, batch_size=32, epochs=6, workers=0, ema_decay=0.0, hflip=0.0, erase=0.0,
                          seed=0)
        train(cfg, quiet=True)
    finally:
        if previous is None:
            del os.environ["FASHION_MNIST_DIR"]
        else:
            os.environ["FASHION_MNIST_DIR"] = previous
    return folder / "run" / "best.pt"


def make_tiny_detector(folder: Path) -> Path:
    """An untrained SSDLite (V3-Small, x0.25, 96 px) for Fashion-MNIST's 10 classes; its heads get
    larger random weights and its BN random statistics, so that it finds boxes of many scores
    (untrained BN leaves features that tie whole rows of boxes, which NMS may break either way)."""
    import torch
    from model_helpers import randomize_batchnorm

    import mobilenets
    from mobilenets.data import FASHION_MNIST_CLASSES

    torch.manual_seed(0)
    model = mobilenets.create_model("ssdlite_mobilenet_v3_small", reduced_tail=True, width_mult=0.25, input_size=96,
                                    num_classes=11).eval()
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(0, 0.4)
    randomize_batchnorm(model, seed=0)
    path = folder / "detector.pt"
    mobilenets.save_weights(model, path, class_names=list(FASHION_MNIST_CLASSES), category_ids=list(range(1, 11)))
    return path


def samples(folder: Path, n: int = 10) -> list[tuple[Path, int]]:
    """PNG files of the stand-in's test images (28x28 grey, as Fashion-MNIST's) and their labels."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = class_images(n, 10, 28, seed=1)  # the stand-in's test split
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = folder / f"sample{i}-class{label}.png"
        Image.fromarray(image[..., 0]).save(path)
        paths.append((path, int(label)))
    return paths


def png_bytes(width: int, height: int, mode: str = "L") -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width), np.uint8)).convert(mode).save(buf, "PNG")
    return buf.getvalue()
