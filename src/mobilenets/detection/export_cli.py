"""``mobilenets export`` for a detector: load it, gather verification and calibration images."""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from ..export import check_export
from .dataset import DetectionDataset, load_eval_annotations
from .export import describe_export, export_detector
from .predict import load_detector
from .runtime import resize_batch


def images_from(data: str, class_names: list[str], category_ids: list[int], size: int, count: int,
                seed: int = 0) -> list[Tensor]:
    """``count`` images of ``data`` (drawn at random, seeded), resized, as batches of 8."""
    annotations = load_eval_annotations(data, class_names, category_ids)
    order = torch.randperm(len(annotations.records), generator=torch.Generator().manual_seed(seed))[:count]
    dataset = DetectionDataset([annotations.records[i] for i in order])
    images = [item[0] for item in (dataset[i] for i in range(len(dataset))) if item is not None]
    if not images:
        raise ValueError(f"no readable images in {data}")
    return [resize_batch(images[i : i + 8], size) for i in range(0, len(images), 8)]


def export_detector_command(args: argparse.Namespace) -> str:
    if args.in_chans not in (None, 3):
        raise ValueError("detectors take RGB images (--in-chans 3)")
    check_export(args.out, args.format, args.int8)
    loaded = load_detector(args.checkpoint, model=args.model, weights=args.weights, width_mult=args.width_mult,
                           **({"num_classes": args.num_classes} if args.num_classes else {}))
    model = loaded.model
    size = model.input_size
    calibration = None
    if args.calib_data:
        calibration = images_from(args.calib_data, loaded.class_names, loaded.category_ids, size, args.calib_size)
        images = calibration[:1]
    else:  # a detector on noise finds little; with --calib-data the check uses real images
        images = [torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0))]
    result = export_detector(model, args.out, args.format, class_names=loaded.class_names,
                             category_ids=loaded.category_ids, images=images,
                             calibration=calibration if args.int8 else None)
    return describe_export(result, sum(len(x) for x in images))
