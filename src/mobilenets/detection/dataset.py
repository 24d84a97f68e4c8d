"""Detection data for training and evaluation: images with their boxes, SSD augmentation.

Augmentation (``ssd_augmentation``) is SSD's (Liu et al. Sec. 2.2, "Data augmentation") built
from ``torchvision.transforms.v2``, which moves the boxes with the pixels: photometric
distortion, zoom out (the image placed on a canvas up to 4x larger, for small objects), a
random crop that keeps a minimum IoU with some object, horizontal flip; then the resize to
the model's input size and the removal of boxes that became degenerate. ``mild_augmentation``
keeps only the photometric distortion and the flip, for short runs (``Recipe.box_augment``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..preprocess import ImageReader
from .annotations import Annotations, ImageRecord, read_coco, read_voc

IMAGENET_MEAN_255 = (123, 117, 104)  # zoom-out canvas colour (torchvision's detection reference)


def box_augmentation(name: str, size: int, hflip: float = 0.5) -> v2.Compose:
    """``name``: "ssd" or "mild" (``Recipe.box_augment``)."""
    return {"ssd": ssd_augmentation, "mild": mild_augmentation}[name](size, hflip)


def ssd_augmentation(size: int, hflip: float = 0.5) -> v2.Compose:
    return v2.Compose([
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomZoomOut(fill=defaultdict(lambda: 0, {tv_tensors.Image: IMAGENET_MEAN_255})),
        v2.RandomIoUCrop(),
        *_flip_and_resize(size, hflip),
    ])


def mild_augmentation(size: int, hflip: float = 0.5) -> v2.Compose:
    """SSD's photometric distortion and flip only: every object stays whole and at its scale."""
    return v2.Compose([v2.RandomPhotometricDistort(p=0.5), *_flip_and_resize(size, hflip)])


def _flip_and_resize(size: int, hflip: float) -> list[v2.Transform]:
    """The common end: flip, resize to the input side, drop degenerate boxes, scale to [0, 1]."""
    return [
        *([v2.RandomHorizontalFlip(hflip)] if hflip else []),
        v2.Resize((size, size), antialias=True),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
    ]


def evaluation_transform() -> v2.Transform:
    """Images at their own size: the model resizes them and maps its boxes back."""
    return v2.ToDtype(torch.float32, scale=True)


class DetectionDataset(Dataset):
    """``(image, target)`` pairs: a float image in [0, 1] and ``{"boxes", "labels", "image_id"}``.

    Crowd (COCO) and difficult (VOC) objects are left out of the targets. An image that cannot
    be decoded is reported once, by name, and gives ``None`` (``collate`` drops it).
    """

    def __init__(self, records: list[ImageRecord], transform: v2.Transform | None = None) -> None:
        self.records, self.transform = records, transform or evaluation_transform()
        self.reader = ImageReader(len(records))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict] | None:
        r = self.records[index]
        img = self.reader.open(index, r.path)
        if img is None:
            return None
        image = tv_tensors.Image(v2.functional.pil_to_tensor(img))
        keep = [i for i in range(len(r.boxes)) if not (r.crowd and r.crowd[i])]
        boxes = torch.tensor([r.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(image.shape[-2:])),
            "labels": torch.tensor([r.labels[i] for i in keep], dtype=torch.int64),
            "image_id": r.image_id,
        }
        image, target = self.transform(image, target)
        target["boxes"] = target["boxes"].as_subclass(Tensor)
        return image.as_subclass(Tensor), target


def collate(batch: list) -> tuple[list[Tensor], list[dict]]:
    """Lists of images and targets (detectors take images of any size), unreadable ones dropped."""
    batch = [b for b in batch if b is not None]
    return [b[0] for b in batch], [b[1] for b in batch]


@dataclass
class DetectionData:
    """Training and validation annotations of one data set, and their classes."""

    name: str
    train: Annotations
    val: Annotations

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def report(self) -> list[str]:
        lines = [self.train.summary(), self.val.summary()]
        return lines + self.train.problems.lines() + self.val.problems.lines()


def load_detection_data(data: str, val_data: str | None = None) -> DetectionData:
    """COCO JSON (``data`` = train.json, ``val_data`` = val.json) or a Pascal VOC folder
    (``data``; its ``train`` and ``val`` image sets)."""
    path = Path(data)
    if path.is_dir():
        if val_data:
            raise ValueError("--val-data is for COCO JSON; a Pascal VOC folder brings its own val split")
        train = read_voc(path, "train")
        return DetectionData(str(path), train, read_voc(path, "val", train.class_names))
    if path.suffix.lower() != ".json":
        raise ValueError(f"{data}: detection data is a COCO JSON file (with --val-data VAL.json) or a Pascal VOC "
                         "folder")
    if not val_data:
        raise ValueError("COCO JSON training data needs --val-data VAL.json")
    train, val = read_coco(path), read_coco(val_data)
    _same_categories(val, train.class_names, train.category_ids, f"{data} has")
    for split in (train, val):
        if not split.records:
            raise ValueError(f"no usable images in {split.source}")
        if not split.num_boxes:
            raise ValueError(f"{split.source} has no usable boxes to {'train' if split is train else 'validate'} on")
    return DetectionData(str(path), train, val)


def _same_categories(annotations: Annotations, class_names: list[str], category_ids: list[int], theirs: str) -> None:
    if (annotations.class_names, annotations.category_ids) != (class_names, category_ids):
        mine = list(zip(annotations.category_ids, annotations.class_names))
        raise ValueError(f"{annotations.source} has the categories (id, name) {mine}; {theirs} "
                         f"{list(zip(category_ids, class_names))}")


def load_eval_annotations(data: str, class_names: list[str], category_ids: list[int]) -> Annotations:
    """The annotations a trained detector is measured on: a COCO JSON file, or a VOC folder's
    ``val`` split; their categories must be the detector's."""
    path = Path(data)
    if not path.is_dir() and path.suffix.lower() != ".json":
        raise ValueError(f"{data}: a detector is measured on a COCO JSON file or a Pascal VOC folder")
    annotations = read_voc(path, "val", class_names) if path.is_dir() else read_coco(path)
    _same_categories(annotations, class_names, category_ids, "the detector was trained on")
    if not annotations.records:
        raise ValueError(f"no usable images in {data}")
    if not annotations.num_boxes:
        raise ValueError(f"{data} has no usable boxes: the mAP is undefined")
    return annotations
