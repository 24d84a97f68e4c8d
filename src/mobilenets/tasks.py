"""What a training run learns: the data, the model, the loss of a batch, the validation metrics.

``Trainer`` (train.py) owns the loop, the optimizer, EMA, mixed precision, DDP, checkpoints and
logs; a task owns everything that depends on what is learned. Two tasks: classification
(here) and detection (``detection/task.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .adapt import describe, resolve
from .data import BatchAugment, DataBundle, batch_mix, collate_skipping_none, folder_train_transform, load_data
from .distributed import Dist
from .evaluate import evaluate
from .recipes import Recipe
from .registry import create_model
from .run_config import TrainConfig


@dataclass(frozen=True)
class StepResult:
    loss: Tensor  # what is back-propagated
    value: float  # the loss reported (comparable with validation's)
    count: int  # images in the batch
    stats: dict[str, float]  # sums over the batch, averaged per image over the epoch (e.g. correct)


class Task(Protocol):
    metric: str  # the validation metric that chooses the best epoch (higher is better), e.g. "val_acc"
    shown: tuple[str, ...]  # the metrics printed at the end of each epoch
    notes: list[str]  # what loading the data had to say (skipped annotations...)
    class_names: list[str]
    train_set: Dataset
    has_test: bool

    def resolve(self, recipe: Recipe, world_size: int) -> Recipe: ...
    def prepare(self, recipe: Recipe, device: torch.device) -> None: ...
    def build_model(self, cfg: TrainConfig) -> nn.Module: ...
    def collate(self, batch: list) -> Any: ...
    def batch_size_of(self, batch: Any) -> int: ...
    def step(self, net: nn.Module, batch: Any, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> StepResult: ...
    def evaluate(self, model: nn.Module, dist: Dist, split: str = "val", workers: int = 0) -> dict[str, float]: ...
    def checkpoint_fields(self) -> dict: ...
    def describe(self) -> str: ...
    def describe_recipe(self, recipe: Recipe) -> str: ...
    def format_test(self, test: dict) -> str: ...


class ClassificationTask:
    """Image classification on Fashion-MNIST or an image folder (cross-entropy, top-1)."""

    metric = "val_acc"
    shown = ("train_loss", "train_acc", "val_loss", "val_acc")  # in the per-epoch line
    notes: list[str] = []

    def __init__(self, cfg: TrainConfig) -> None:
        self.data: DataBundle = load_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed, in_chans=cfg.in_chans,
                                          subset=cfg.subset)
        self.class_names, self.train_set = self.data.class_names, self.data.train
        self.has_test = self.data.test is not None

    def resolve(self, recipe: Recipe, world_size: int) -> Recipe:
        return resolve(recipe, self.data.facts(), world_size)

    def prepare(self, recipe: Recipe, device: torch.device) -> None:
        r = self.recipe = recipe
        self.preprocess = self.data.preprocess(r.input_size, r.eval_crop)
        self.data.set_transforms(folder_train_transform(r.input_size, r.min_crop, r.hflip, r.erase),
                                 self.preprocess.image_transform())
        self.to_input = self.preprocess.batch_transform(r.channels_last).to(device)
        self.augment = BatchAugment(r.pad, r.hflip, r.erase) if self.data.in_memory else None
        self.mix = batch_mix(r.mixup, r.cutmix, len(self.class_names))

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        r = cfg.recipe
        return create_model(cfg.model, width_mult=r.width_mult, num_classes=len(self.class_names),
                            in_chans=self.data.in_chans, dropout=r.dropout)

    def collate(self, batch: list) -> tuple[Tensor, Tensor]:
        return collate_skipping_none(batch)

    def batch_size_of(self, batch: tuple[Tensor, Tensor]) -> int:
        return len(batch[1])

    def model_inputs(self, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
        """A training batch as the model sees it (augmented, preprocessed; not mixed) and its labels."""
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        if self.augment is not None:
            images = self.augment(images)
        return self.to_input(images), labels

    def step(self, net: nn.Module, batch: tuple[Tensor, Tensor], device: torch.device, autocast) -> StepResult:
        images, labels = self.model_inputs(batch, device)
        targets = labels
        if self.mix is not None:  # soft targets: each image's share of each class
            images, targets = self.mix(images, labels)
        with autocast():
            logits = net(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=self.recipe.label_smoothing)
        # report plain cross-entropy (against the mixed labels when mixing), whatever the smoothing
        smoothed = self.recipe.label_smoothing
        value = F.cross_entropy(logits.detach().float(), targets).item() if smoothed else loss.item()
        # a mixed image counts as its larger share's class
        truth = targets.argmax(dim=1) if targets.ndim == 2 else targets
        correct = (logits.detach().argmax(dim=1) == truth).sum().item()
        return StepResult(loss, value, len(labels), {"acc": correct})

    def evaluate(self, model: nn.Module, dist: Dist, split: str = "val", workers: int = 0) -> dict[str, float]:
        dataset = self.data.test if split == "test" else self.data.val
        shard = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
        batches = DataLoader(shard, batch_size=max(self.recipe.batch_size, 256), num_workers=workers,
                             collate_fn=collate_skipping_none)
        r = evaluate(model, batches, self.to_input, len(self.class_names), dist)
        return {"loss": r.loss, "acc": r.top1, "top5": r.top5, "images": r.count}

    def checkpoint_fields(self) -> dict:
        return {"class_names": self.class_names, "preprocess": self.preprocess.to_dict()}

    def describe(self) -> str:
        test = f" / {len(self.data.test):,} test" if self.has_test else ""
        return (f"{self.data.name}: {len(self.data.train):,} train / {len(self.data.val):,} val{test} images, "
                f"{len(self.class_names)} classes, {self.data.in_chans} channel(s)")

    def describe_recipe(self, recipe: Recipe) -> str:
        return describe(recipe, self.data.in_memory)

    def format_test(self, test: dict) -> str:
        k = min(5, len(self.class_names))  # as `mobilenets eval` counts it
        return f"top-1 {100 * test['acc']:.2f} %, top-{k} {100 * test['top5']:.2f} % on {test['images']:,} images"


def make_task(cfg: TrainConfig) -> Task:
    from .registry import get_spec, is_detector

    get_spec(cfg.model)  # an unknown name is the error to report, before any data is read
    if is_detector(cfg.model):
        from .detection.task import DetectionTask

        return DetectionTask(cfg)
    return ClassificationTask(cfg)
