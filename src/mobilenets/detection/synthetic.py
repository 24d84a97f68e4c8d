"""A detection set made from Fashion-MNIST: items at several scales, with overlaps, on clutter.

Each canvas gets a random colour gradient, translucent shapes and lines and some noise; then 1
to 6 Fashion-MNIST items (training canvases: as many as asked for), each scaled to a side of 20
to 160 pixels, tinted and pasted as solid objects that keep their own shading (``_paste``), so
that later items partly hide earlier ones (two boxes overlap, see below). A box is the item's
visible extent before occlusion (its pixels above ``INK``). Training canvases use the
Fashion-MNIST training items, validation canvases the test items, so no item is seen in both.
Written as PNG files plus COCO JSON.

Two boxes never share more than ``MAX_OVERLAP`` of the smaller one's area, so no item is
hidden behind another.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data import FASHION_MNIST_CLASSES, load_fashion_mnist
from ..files import atomic_write
from .annotations import ImageRecord, to_coco

MAX_OVERLAP = 0.4  # of the smaller box's area
INK = 40  # grey level above which an item's pixel is part of the item
MIN_SIDE, MAX_SIDE = 20, 160
ITEMS = (1, 6)  # items asked for on a canvas, fewest and most


def _clutter(rng: np.random.Generator, size: int) -> Image.Image:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    base = (a * (1 - t) + b * t).repeat(size, axis=1).astype(np.uint8)
    img = Image.fromarray(base).convert("RGBA")
    layer = Image.new("RGBA", (size, size))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.integers(4, 12)):
        colour = (*(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(60, 160)))
        x, y = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(size // 10, size // 2, 2)
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.line((x, y, x + w, y + h), fill=colour, width=int(rng.integers(2, 8)))
    img = Image.alpha_composite(img, layer).convert("RGB")
    noise = rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _paste(region: np.ndarray, item: np.ndarray, colour: np.ndarray) -> None:
    """Paste a grey ``item`` onto ``region`` in place: opaque from twice ``INK`` up (soft below), in
    ``colour`` shaded by the item's own grey levels, so that its folds, seams and prints show. A
    first version used the grey level as opacity, which made items translucent silhouettes: a
    classifier given their boxes told 72 % of them apart, 76 % shaded, and a detector learned them
    slower (docs/results.md, section 10)."""
    alpha = np.clip(item / INK - 1, 0, 1)[..., None]
    shade = np.clip(colour * (0.3 + 0.9 * item / 255)[..., None], 0, 255)
    region[:] = region * (1 - alpha) + shade * alpha


Box = tuple[float, float, float, float]


def make_canvas(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int,
                count: tuple[int, int] = ITEMS) -> tuple[Image.Image, list[Box], list[int]]:
    """A canvas with ``count`` (fewest, most) items asked for; fewer where no place is free."""
    canvas = np.asarray(_clutter(rng, size)).astype(np.float32)
    boxes, classes = [], []
    for _ in range(rng.integers(count[0], count[1] + 1)):
        for _attempt in range(20):
            side = int(np.exp(rng.uniform(np.log(MIN_SIDE), np.log(min(MAX_SIDE, size // 2)))))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
            k = int(rng.integers(len(items)))
            mask = np.asarray(Image.fromarray(items[k]).resize((side, side), Image.BILINEAR)).astype(np.float32)
            ys, xs = np.nonzero(mask > INK)
            if len(xs) == 0:
                continue
            box = (float(x + xs.min()), float(y + ys.min()), float(x + xs.max() + 1), float(y + ys.max() + 1))
            if all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
                break
        else:
            continue
        _paste(canvas[y : y + side, x : x + side], mask, rng.integers(0, 256, 3).astype(np.float32))
        boxes.append(box)
        classes.append(int(labels[k]))
    return Image.fromarray(canvas.astype(np.uint8)), boxes, classes


def check_items(items: tuple[int, int]) -> None:
    """Refuse a range of items a canvas cannot be asked for."""
    fewest, most = items
    if not 1 <= fewest <= most:
        raise ValueError(f"--train-items {fewest} {most}: give the fewest and the most, 1 <= FEWEST <= MOST")


def make_detection_data(out: str | Path, train: int = 2000, val: int = 400, size: int = 320, seed: int = 0,
                        train_items: tuple[int, int] = ITEMS, progress=None) -> dict[str, Path]:
    """Write ``out/train.json``, ``out/val.json`` and their PNGs; return the JSON paths. The
    validation canvases always get ``ITEMS``, so that a set made with denser training canvases
    (``train_items``) is scored on the same validation canvases as the default one."""
    if size < 2 * MIN_SIDE:
        raise ValueError(f"--size must be at least {2 * MIN_SIDE} (items are {MIN_SIDE} to {MAX_SIDE} pixels)")
    check_items(train_items)
    out = Path(out)
    written = {}
    splits = (("train", train, "train", seed, train_items), ("val", val, "test", seed + 1, ITEMS))
    for split, count, source, split_seed, asked in splits:
        items, labels = (t.numpy() for t in load_fashion_mnist(source).tensors)
        items = items[:, 0]
        rng = np.random.default_rng(split_seed)
        (out / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(count):
            image, boxes, classes = make_canvas(rng, items, labels, size, asked)
            path = out / split / f"{i:06d}.png"
            atomic_write(path, lambda p, image=image: image.save(p, format="PNG"))
            records.append(ImageRecord(str(path), i + 1, size, size, tuple(boxes), tuple(c + 1 for c in classes)))
            if progress:
                progress(split, i + 1, count)
        doc = to_coco(records, FASHION_MNIST_CLASSES, list(range(1, 11)), out)
        written[split] = out / f"{split}.json"
        atomic_write(written[split], lambda p, doc=doc: p.write_text(json.dumps(doc)))
    return written
