"""Tiny, learnable stand-ins for the real data sets, written in their real formats."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(n: int, classes: int, size: int, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images where class k is a bright square at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, (n, size, size, channels), dtype=np.uint8)
    cell = size // 4
    for i, k in enumerate(labels):
        r, c = divmod(int(k) % 16, 4)
        images[i, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = 230
    return images, labels.astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, n_train: int = 320, n_test: int = 80) -> Path:
    """Fashion-MNIST's four IDX files (28x28 grey, 10 classes) with a tiny learnable task."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = class_images(n, 10, 28, seed=seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 40, channels: int = 3,
                 splits: tuple[str, ...] = ("train", "val")) -> Path:
    """An ImageFolder tree (root/split/class/*.png) of PNGs."""
    for split_index, split in enumerate(splits):
        images, labels = class_images(per_class * classes, classes, size, channels, seed=split_index)
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = root / split / f"class_{label}" if split else root / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[..., 0] if channels == 1 else img).save(folder / f"{i:04d}.png")
    return root


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and carries almost none: the header of a
    decompression bomb (the real one would inflate a few KB of zeros to gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
