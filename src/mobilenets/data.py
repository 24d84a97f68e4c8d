"""Datasets for training and evaluation: Fashion-MNIST from its IDX files, or an image folder.

Images stay uint8 until a batch is formed; ``preprocess.BatchPreprocess`` then turns a batch into
model input (float, normalised, resized to the input size) in one vectorised step, for training,
evaluation and prediction alike.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from .adapt import DataFacts
from .preprocess import GREY_MEAN, GREY_STD, IMAGENET_MEAN, IMAGENET_STD, ImageReader, Preprocess

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # over the 60,000 training images
FASHION_MNIST_VAL = 5000  # training images held out to choose the best epoch; the test set is kept for the end


@dataclass
class DataBundle:
    """Train, validation and (where there is one) test sets, with what a model and its checkpoint
    need to know about them. The validation set chooses the best epoch; the test set is kept
    for one evaluation at the end."""

    name: str
    train: Dataset
    val: Dataset
    class_names: list[str]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool  # uint8 tensors at native size (augmented per batch) rather than files
    native_size: int | None = None  # side of every image when in memory
    test: Dataset | None = None
    image_size: int = 224  # typical shorter side of the images

    def preprocess(self, input_size: int, eval_crop: float = 0.875) -> Preprocess:
        """How a single image file is read to match this data (used by predict and export)."""
        if self.native_size:
            return Preprocess(self.native_size, self.native_size, self.mean, self.std, input_size)
        return Preprocess(input_size, round(input_size / eval_crop), self.mean, self.std)

    def facts(self) -> DataFacts:
        return DataFacts(len(self.train), self.image_size, self.in_chans)

    def set_transforms(self, train: v2.Transform | None, evaluation: v2.Transform | None) -> None:
        """Per-image transforms of image files (in-memory data is transformed per batch)."""
        for dataset, transform in ((self.train, train), (self.val, evaluation), (self.test, evaluation)):
            while isinstance(dataset, Subset):
                dataset = dataset.dataset
            if isinstance(dataset, ImageFiles):
                dataset.transform = transform

    def eval_split(self, name: str | None = None) -> tuple[str, Dataset]:
        """The split ``name`` (``val`` or ``test``); by default the one a finished model is
        measured on: test where there is one, else validation."""
        if name is None:
            name = "test" if self.test is not None else "val"
        if name not in ("val", "test"):
            raise ValueError(f"unknown split {name!r}; choose val or test")
        if name == "test" and self.test is None:
            raise ValueError(f"{self.name} has no test split (a folder's is its test/ sub-folder)")
        return name, self.test if name == "test" else self.val


def folder_train_transform(input_size: int, min_crop: float, hflip: float, erase: float) -> v2.Compose:
    """Light augmentation (V1 Sec. 3.2): random resized crops no smaller than ``min_crop``,
    horizontal flips with probability ``hflip`` (0 for data where a mirror image is another
    class), random erasing with probability ``erase``."""
    return v2.Compose([
        v2.RandomResizedCrop(input_size, scale=(min_crop, 1.0), antialias=True),
        *([v2.RandomHorizontalFlip(hflip)] if hflip else []),
        *([v2.RandomErasing(p=erase)] if erase else []),
    ])


# --------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes, checking its header against its size."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
            "(or set FASHION_MNIST_DIR)"
        )
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path} is corrupt: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated or corrupt: header says {dims}, file has {len(raw) - offset} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(split: str, root: Path | None = None) -> TensorDataset:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000) as uint8 images (N, 1, 28, 28) and labels.

    The files are read from ``root``, else ``$FASHION_MNIST_DIR``, else the Debian package's folder.
    """
    root = Path(root or os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR)
    prefix = {"train": "train", "test": "t10k"}[split]
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return TensorDataset(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------- image folders


class ImageFiles(Dataset):
    """Image files with labels; unreadable files are reported by name and skipped, not fatal.

    ``__getitem__`` returns ``None`` for a file that cannot be decoded (reported once, by name);
    ``collate_skipping_none`` drops it from its batch, so one broken image cannot stop a run mid-epoch.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], grey: bool, transform: v2.Transform | None = None):
        self.samples = list(samples)
        self.transform = transform
        self.reader = ImageReader(len(self.samples), grey)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | None:
        path, label = self.samples[index]
        img = self.reader.open(index, path)
        if img is None:
            return None
        x = v2.functional.pil_to_tensor(img)
        return (self.transform(x) if self.transform else x), label


def collate_skipping_none(batch: list) -> tuple[Tensor, Tensor]:
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch])


def scan_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sub-folder names) and (file, label) pairs of an ImageFolder-style tree."""
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    # hidden folders (.ipynb_checkpoints, .git) are not classes
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
    class_to_idx = {name: i for i, name in enumerate(classes)}
    samples, ignored = [], []
    for name in classes:
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                path = os.path.join(dirpath, file)
                (samples if file.lower().endswith(IMG_EXTENSIONS) else ignored).append((path, class_to_idx[name]))
    if ignored:
        print(
            f"warning: ignoring {len(ignored)} non-image file(s) under {root}, e.g. {ignored[0][0]}", file=sys.stderr
        )
    if not samples:
        raise ValueError(f"no images found under {root} (extensions: {', '.join(IMG_EXTENSIONS)})")
    used = sorted({label for _, label in samples})
    if len(used) < 2:
        raise ValueError(f"{root} has images of only one class ({classes[used[0]]}); classification needs two or more")
    return classes, samples


def images_in(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in ``folder`` (not in its sub-folders), sorted."""
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))


def _check_every_class_has_images(root: Path, classes: list[str], samples: Sequence[tuple[str, int]]) -> None:
    used = {label for _, label in samples}
    empty = [name for i, name in enumerate(classes) if i not in used]
    if empty:
        raise ValueError(f"class folder(s) of {root} without images: {', '.join(empty)} (remove them or add images)")


def guess_grey(samples: Sequence[tuple[str, int]], probe: int = 32) -> bool:
    """True when the first readable images are all single-channel (L, 1, I, F modes); folders'
    samples come shuffled (``load_image_folder``), so the probe spans the classes."""
    modes = []
    for path, _ in samples[:probe]:
        try:
            with Image.open(path) as img:
                modes.append(img.mode)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
            continue
    return bool(modes) and all(m in ("L", "1", "I", "I;16", "F", "LA") for m in modes)


def typical_size(samples: Sequence[tuple[str, int]], probe: int = 64) -> int:
    """Median shorter side of the first readable images (headers only, nothing decoded)."""
    sides = []
    for path, _ in samples[:probe]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError):
            continue
    return int(np.median(sides)) if sides else 224


def load_image_folder(root: Path, *, val_split: float | None, seed: int, in_chans: int | None) -> DataBundle:
    """``root/train`` and ``root/val`` (or ``root`` split by ``val_split``), one sub-folder per
    class; ``root/test``, if there is one, is kept for the final evaluation."""
    if not root.exists():
        raise FileNotFoundError(f"data folder not found: {root}")
    if not root.is_dir():
        raise ValueError(f"{root} is a file: classifiers read fashion-mnist or an image folder (<class>/<image>, "
                         "or train/ and val/ of those)")
    test_samples = None
    if (root / "train").is_dir():
        classes, train_samples = scan_folder(root / "train")
        _check_every_class_has_images(root / "train", classes, train_samples)
        val_root = root / "val" if (root / "val").is_dir() else None
        if val_root is None and not val_split:
            raise ValueError(f"{root} has train/ but no val/: add val/ or pass --val-split (e.g. 0.1)")
        if val_root is not None and val_split:
            raise ValueError(f"{root} has val/, which holds the validation images: --val-split is for folders "
                             "without one")
        val_samples = _scan_split(root, "val", classes) if val_root is not None else None
        if (root / "test").is_dir():
            test_samples = _scan_split(root, "test", classes)
    else:
        classes, train_samples = scan_folder(root)
        _check_every_class_has_images(root, classes, train_samples)
        val_samples = None
        if not val_split:
            raise ValueError(f"{root} has no train/ and val/ sub-folders: "
                             "pass --val-split (e.g. 0.1) to hold out images")
    # Shuffled once, seeded: a --subset or a probe of the first images then spans the classes.
    shuffle = _seeded_shuffle(seed)
    train_samples, test_samples = shuffle(train_samples), shuffle(test_samples)
    if val_samples is None:
        if not 0 < val_split < 1:
            raise ValueError(f"--val-split must be between 0 and 1, got {val_split}")
        n_val = max(1, round(len(train_samples) * val_split))
        val_samples, train_samples = train_samples[:n_val], train_samples[n_val:]
    else:
        val_samples = shuffle(val_samples)
    grey = guess_grey(train_samples) if in_chans is None else in_chans == 1
    if in_chans not in (None, 1, 3):
        raise ValueError(f"image folders give 1 (grey) or 3 (colour) channels, not --in-chans {in_chans}")
    return DataBundle(
        name=str(root),
        train=ImageFiles(train_samples, grey),
        val=ImageFiles(val_samples, grey),
        test=ImageFiles(test_samples, grey) if test_samples else None,
        class_names=classes,
        in_chans=1 if grey else 3,
        mean=GREY_MEAN if grey else IMAGENET_MEAN,
        std=GREY_STD if grey else IMAGENET_STD,
        in_memory=False,
        image_size=typical_size(train_samples),
    )


def _seeded_shuffle(seed: int) -> Callable[[list | None], list | None]:
    gen = torch.Generator().manual_seed(seed)
    return lambda items: None if items is None else [items[i] for i in torch.randperm(len(items), generator=gen)]


def _scan_split(root: Path, split: str, classes: list[str]) -> list[tuple[str, int]]:
    split_classes, samples = scan_folder(root / split)
    if split_classes != classes:
        raise ValueError(f"{root}/train and {root}/{split} have different classes: {classes} vs {split_classes}")
    return samples


def load_data(
    data: str,
    *,
    val_split: float | None = None,
    seed: int = 0,
    in_chans: int | None = None,
    subset: int | None = None,
) -> DataBundle:
    """``data`` is ``fashion-mnist`` or the path of an image folder.

    Fashion-MNIST holds out 5,000 of its 60,000 training images for validation (or the
    fraction ``val_split``) and keeps its 10,000 test images for the end. ``subset`` keeps the
    first N training and N // 6 validation and test images (for quick runs and tests); both
    sources come shuffled (seeded), so these are a random sample across the classes. Image
    files get their transforms from ``DataBundle.set_transforms``.
    """
    if data == "fashion-mnist":
        if in_chans not in (None, 1):
            raise ValueError("Fashion-MNIST is grey: it has 1 channel")
        train = load_fashion_mnist("train")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        if val_split is not None and not 0 < val_split < 1:
            raise ValueError(f"--val-split must be between 0 and 1, got {val_split}")
        n_val = round(len(train) * val_split) if val_split else min(FASHION_MNIST_VAL, len(train) // 12)
        bundle = DataBundle(
            "fashion-mnist", Subset(train, order[n_val:].tolist()), Subset(train, order[:n_val].tolist()),
            FASHION_MNIST_CLASSES, 1, FASHION_MNIST_MEAN, FASHION_MNIST_STD, True, 28,
            test=load_fashion_mnist("test"), image_size=28,
        )
    else:
        bundle = load_image_folder(Path(data), val_split=val_split, seed=seed, in_chans=in_chans)
    if subset:
        bundle.train = Subset(bundle.train, range(min(subset, len(bundle.train))))
        n_eval = max(subset // 6, 1)
        bundle.val = Subset(bundle.val, range(min(n_eval, len(bundle.val))))
        if bundle.test is not None:
            bundle.test = Subset(bundle.test, range(min(n_eval, len(bundle.test))))
    return bundle


# --------------------------------------------------------------------------- batches


class BatchAugment(torch.nn.Module):
    """Per-image random translation, horizontal flip and random erasing on a whole uint8 batch.

    For in-memory datasets of small images (Fashion-MNIST): the same augmentations torchvision's
    RandomCrop(padding), RandomHorizontalFlip(p) and RandomErasing give, drawn independently for
    every image but computed for the batch at once (on the batch's device), so augmentation
    costs microseconds.
    """

    def __init__(self, pad: int = 0, hflip: float = 0.0, erase: float = 0.0) -> None:
        super().__init__()
        self.pad, self.hflip, self.erase = pad, hflip, erase

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        dev = x.device
        if self.pad:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n, 1, 1), device=dev)
            dx = torch.randint(0, 2 * p + 1, (n, 1, 1), device=dev)
            rows = (dy + torch.arange(h, device=dev).view(1, h, 1)).expand(n, h, w)
            cols = (dx + torch.arange(w, device=dev).view(1, 1, w)).expand(n, h, w)
            x = padded[torch.arange(n, device=dev).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
        if self.hflip:
            x = torch.where(torch.rand(n, 1, 1, 1, device=dev) < self.hflip, x.flip(-1), x)
        if self.erase:
            x = x.masked_fill(self._erase_mask(n, h, w, dev), 0)
        return x.contiguous()

    def _erase_mask(self, n: int, h: int, w: int, dev: torch.device) -> Tensor:
        # RandomErasing's defaults: area 2-33 % of the image, aspect ratio 0.3-3.3, probability p
        area = torch.empty(n, device=dev).uniform_(0.02, 0.33) * h * w
        ratio = torch.exp(torch.empty(n, device=dev).uniform_(np.log(0.3), np.log(1 / 0.3)))
        eh = (area * ratio).sqrt().round().clamp(1, h).long()
        ew = (area / ratio).sqrt().round().clamp(1, w).long()
        top = (torch.rand(n, device=dev) * (h - eh + 1)).long()
        left = (torch.rand(n, device=dev) * (w - ew + 1)).long()
        ys, xs = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
        box = (
            (ys >= top.view(n, 1, 1)) & (ys < (top + eh).view(n, 1, 1))
            & (xs >= left.view(n, 1, 1)) & (xs < (left + ew).view(n, 1, 1))
        )
        on = torch.rand(n, device=dev) < self.erase
        return (box & on.view(n, 1, 1)).unsqueeze(1)


def batch_mix(mixup: float, cutmix: float, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix of a batch (images, integer labels) -> (mixed images, soft labels), or
    ``None`` when both are off; with both, one of the two is drawn for each batch."""
    mixes = [cls(alpha=alpha, num_classes=num_classes) for cls, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix))
             if alpha > 0]
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
