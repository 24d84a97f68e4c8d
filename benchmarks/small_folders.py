"""Small image folders the recipes were never tuned on, and the `train` command measured on them.

Two folders, written as a user would have them (``train/<class>/*.png``, ``val/<class>/*.png``):

* ``digits``: OpenCV's 5,000 handwritten digits (20x20 grey, 10 classes; Debian package
  ``opencv-doc``, ``examples/data/digits.png``), 4,000 for training and 1,000 for validation.
* ``shapes``: 10 shapes (circle, square, triangle, ...) in random colours, sizes, places and
  slight rotations on softened photo backgrounds (32x32 colour; the photos are the other
  pictures of ``opencv-doc``), 4,000 / 1,000.

For each folder it runs the given ``mobilenets train`` command and, as the peer, a plain
two-layer CNN trained with Adam for the same epochs, and prints the validation accuracies:

    .venv/bin/python benchmarks/small_folders.py --out runs/folders -- \\
        --model mobilenet_v1 --width-mult 0.5 --epochs 8 --hflip 0
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch import nn
from torch.nn import functional as F

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon", "half_disc", "ell")


def _need_opencv_data() -> None:
    if not (OPENCV_DATA / "digits.png").is_file():
        sys.exit(f"{OPENCV_DATA / 'digits.png'} not found: apt-get install opencv-doc")


def _write_split(root: Path, images: list[Image.Image], labels: list[str], n_val: int, seed: int) -> None:
    order = np.random.default_rng(seed).permutation(len(images))
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        folder = root / split / labels[i]
        folder.mkdir(parents=True, exist_ok=True)
        images[i].save(folder / f"{i:05d}.png")


def make_digits(root: Path) -> Path:
    """OpenCV's digits.png: 50 rows x 100 columns of 20x20 digits, 5 rows per digit."""
    _need_opencv_data()
    sheet = np.asarray(Image.open(OPENCV_DATA / "digits.png").convert("L"))
    images, labels = [], []
    for row in range(50):
        for col in range(100):
            images.append(Image.fromarray(sheet[row * 20 : (row + 1) * 20, col * 20 : (col + 1) * 20]))
            labels.append(str(row // 5))
    _write_split(root, images, labels, n_val=1000, seed=0)
    return root


def _shape_polygon(name: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(points: int, radius: list[float], offset: float = -math.pi / 2) -> list[tuple[float, float]]:
        out = []
        for k in range(points * len(radius)):
            a = offset + angle + 2 * math.pi * k / (points * len(radius))
            rr = r * radius[k % len(radius)]
            out.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return out

    if name == "square":
        return ring(4, [1.0], offset=math.pi / 4)
    if name == "triangle":
        return ring(3, [1.0])
    if name == "star":
        return ring(5, [1.0, 0.42])
    if name == "hexagon":
        return ring(6, [1.0])
    if name in ("cross", "ell"):
        t = 0.36 * r
        if name == "cross":
            pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
                   (-t, -t)]
        else:
            pts = [(-r, -r), (-r + 2 * t, -r), (-r + 2 * t, r - 2 * t), (r, r - 2 * t), (r, r), (-r, r)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(name)


def make_shapes(root: Path, n: int = 5000, size: int = 32, seed: int = 0) -> Path:
    _need_opencv_data()
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(OPENCV_DATA.glob("*.jpg"))
              if min(Image.open(p).size) >= 128]
    images, labels = [], []
    for i in range(n):
        name = SHAPES[i % len(SHAPES)]
        photo = photos[rng.integers(len(photos))]
        scale = rng.uniform(1, 4)  # background crop of size*scale pixels, resized: clutter at several scales
        side = int(size * scale)
        y, x = rng.integers(photo.shape[0] - side), rng.integers(photo.shape[1] - side)
        # a softened photo crop: clutter that does not drown a 32-pixel shape
        img = Image.fromarray(photo[y : y + side, x : x + side]).resize((size * 4, size * 4))
        img = img.filter(ImageFilter.GaussianBlur(6))
        draw = ImageDraw.Draw(img)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        r = rng.uniform(0.28, 0.45) * size * 4
        cx, cy = (rng.uniform(r, size * 4 - r) for _ in range(2))
        angle = rng.uniform(-0.26, 0.26)  # +-15 degrees: a square never turns into a diamond
        if name == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif name == "ring":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=int(r * 0.35))
        elif name == "half_disc":
            draw.pieslice((cx - r, cy - r, cx + r, cy + r), 90 + math.degrees(angle), 270 + math.degrees(angle),
                          fill=colour)
        elif name == "diamond":
            draw.polygon([(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)], fill=colour)
        else:
            draw.polygon(_shape_polygon(name, cx, cy, r, angle), fill=colour)
        images.append(img.resize((size, size), Image.BILINEAR))
        labels.append(name)
    _write_split(root, images, labels, n_val=n // 5, seed=seed)
    return root


# --------------------------------------------------------------------------- the peer


class TwoLayerCNN(nn.Module):
    """The baseline a user tries first: two conv-pool layers and a classifier."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(channels, 32, 3, padding=1), nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 8 * 8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def _tensors(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    classes = sorted(p.name for p in root.iterdir())
    xs, ys = [], []
    for k, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            xs.append(np.asarray(Image.open(f)))
            ys.append(k)
    x = torch.from_numpy(np.stack(xs)).float() / 255
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return (x - 0.5) / 0.25, torch.tensor(ys), classes


def peer_accuracy(folder: Path, epochs: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    xt, yt, classes = _tensors(folder / "train")
    xv, yv, _ = _tensors(folder / "val")
    model = TwoLayerCNN(xt.shape[1], len(classes))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/folders")
    parser.add_argument("--folders", nargs="+", default=["digits", "shapes"], choices=["digits", "shapes"])
    parser.add_argument("--peer-epochs", type=int, default=8)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: arguments of `mobilenets train`")
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    out = Path(args.out)
    results = {}
    for name in args.folders:
        folder = out / "data" / name
        if not folder.exists():
            (make_digits if name == "digits" else make_shapes)(folder)
        run = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        cmd = [sys.executable, "-m", "mobilenets", "train", "--data", str(folder), "--out", str(run), *train_args]
        print("+", " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
        best = max(json.loads(line)["val_acc"] for line in (run / "metrics.jsonl").read_text().splitlines())
        peer = peer_accuracy(folder, args.peer_epochs)
        results[name] = (best, seconds, peer)
    print(f"\n{'folder':<8} {'mobilenets best val':>20} {'time':>8} {'two-layer CNN (Adam)':>22}")
    for name, (best, seconds, peer) in results.items():
        print(f"{name:<8} {100 * best:19.2f}% {seconds / 60:7.1f}m {100 * peer:21.2f}%")


if __name__ == "__main__":
    main()
