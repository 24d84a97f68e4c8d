"""Detection as a training task: COCO or VOC data, SSD augmentation, SSD loss, COCO mAP."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..adapt import LONG_DETECTION_RUN, DataFacts, batch_size_for, resolve, schedule_text, steps_per_epoch
from ..distributed import Dist
from ..recipes import Recipe
from ..registry import create_model, get_spec
from ..run_config import TrainConfig
from ..tasks import StepResult
from .anchors import fit_box_scales
from .dataset import DetectionDataset, box_augmentation, collate, load_detection_data
from .evaluate import evaluate_detector
from .specs import DetectorSpec

# per 256 images: twice torchvision's SSDLite reference (0.15 at 8 x 24, 600 epochs), which learns
# slowly in a short run from scratch (docs/results.md section 10)
DETECTION_LR = 0.4
# a short run from scratch needs steps more than large batches: on the generated set (2,000 canvases,
# 9 epochs, the lr per 256 images kept) batch 32 / 16 / 8 / 4 reached 28.7 / 29.6 / 31.6 / 32.4 % mAP;
# 8 is the floor, as batch 4 steps 10 % fewer images a second (docs/results.md section 10). Counted
# over the run, not an epoch: 13 epochs of 2,000 canvases and 2 of 13,000 both get batch 8
DETECTION_RUN_STEPS = 3000  # at least, about
DETECTION_BATCHES = (8, 32)  # the default's smallest and largest
# warm-up over at most this many steps and at most an epoch (torchvision's detection reference warms
# up over at most 1,000 iterations); one epoch or three of 250 steps ended level (section 10)
DETECTION_WARMUP_STEPS = 250
# a short run from scratch ends its cosine at this fraction of the peak learning rate, with the EMA of
# the weights (evaluated and saved) averaging the last of its high-rate steps: 13 epochs on the generated
# set reached 46.7 % mAP against 44.9 % when decaying to zero (docs/results.md section 10)
DETECTION_LR_FLOOR = 0.6
FIT_BOXES = 2000  # training boxes the default boxes are fitted to (a sample keeps the search to seconds)


class DetectionTask:
    """SSD / SSDLite training (loss: smooth L1 on encoded boxes + cross-entropy with 3:1 hard
    negative mining, both per matched box, as torchvision's SSD computes it); the best epoch is
    the one of highest COCO mAP@[.5:.95] on the validation set."""

    metric = "val_map"
    shown = ("train_loss", "val_map", "val_map50")  # in the per-epoch line (metrics.jsonl has all)
    has_test = False

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.data = load_detection_data(cfg.data, cfg.val_data)
        records = self.data.train.records[: cfg.subset] if cfg.subset else self.data.train.records
        self.val = self.data.val
        if cfg.subset:
            self.val.records = self.val.records[: max(cfg.subset // 6, 1)]
        self.class_names = self.data.class_names
        self.train_set = DetectionDataset(records)
        self.notes = self.data.train.problems.lines() + self.val.problems.lines()

    def resolve(self, recipe: Recipe, world_size: int) -> Recipe:
        spec = get_spec(self.cfg.model)
        n = len(self.train_set)
        batch = recipe.batch_size or batch_size_for(n * recipe.epochs, world_size, DETECTION_RUN_STEPS,
                                                    *DETECTION_BATCHES)
        recipe = recipe.replace(
            input_size=recipe.input_size or spec.input_size,
            batch_size=batch,
            warmup_epochs=recipe.warmup_epochs if recipe.warmup_epochs is not None else
            min(1.0, round(DETECTION_WARMUP_STEPS / steps_per_epoch(n, batch, world_size), 2)),
            lr=recipe.lr if recipe.lr is not None or recipe.optimizer not in (None, "sgd") else DETECTION_LR,
            lr_floor=recipe.lr_floor if recipe.lr_floor is not None else
            DETECTION_LR_FLOOR if recipe.epochs < LONG_DETECTION_RUN and not self.cfg.weights else 0.0,
            bn_recompute=recipe.bn_recompute or 0,  # classifiers only: a detector's step needs its boxes
        )
        recipe = recipe.replace(box_scales=recipe.box_scales or self._box_scales(spec, recipe.input_size))
        return resolve(recipe, DataFacts(n, recipe.input_size, 3), world_size, optimizer="sgd")

    def _box_scales(self, spec: DetectorSpec, size: int) -> tuple[float, float]:
        """Fitted to the training boxes from scratch; a fine-tuned model keeps the default boxes
        its head was trained for."""
        if self.cfg.weights:
            return spec.boxes.min_scale, spec.boxes.max_scale
        boxes = torch.cat([torch.tensor(r.boxes, dtype=torch.float32).reshape(-1, 4)
                           * torch.tensor([size / r.width, size / r.height] * 2) for r in self.train_set.records])
        sample = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))[:FIT_BOXES]
        model = create_model(self.cfg.model, num_classes=2, reduced_tail=self.cfg.reduced_tail, input_size=size)
        return fit_box_scales(boxes[sample], spec.boxes, model.map_sizes, size)

    def prepare(self, recipe: Recipe, device: torch.device) -> None:
        self.recipe = recipe
        self.train_set.transform = box_augmentation(recipe.box_augment, recipe.input_size, recipe.hflip)

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return create_model(cfg.model, width_mult=cfg.recipe.width_mult, num_classes=len(self.class_names) + 1,
                            reduced_tail=cfg.reduced_tail, input_size=cfg.recipe.input_size,
                            box_scales=cfg.recipe.box_scales)

    def collate(self, batch: list):
        return collate(batch)

    def batch_size_of(self, batch) -> int:
        return len(batch[0])

    def step(self, net: nn.Module, batch, device: torch.device, autocast) -> StepResult:
        images = [im.to(device, non_blocking=True) for im in batch[0]]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in batch[1]]
        with autocast():
            losses = net(images, targets)
        box, cls = losses["bbox_regression"].float(), losses["classification"].float()
        loss = box + cls
        n = len(images)
        value = loss.item()
        stats = {"box_loss": box.item() * n, "cls_loss": cls.item() * n} if math.isfinite(value) else {}
        return StepResult(loss, value, n, stats)

    def evaluate(self, model: nn.Module, dist: Dist, split: str = "val", workers: int = 0) -> dict[str, float]:
        return evaluate_detector(model, self.val, dist, workers=workers)

    def checkpoint_fields(self) -> dict:
        return {"class_names": self.class_names, "category_ids": self.data.train.category_ids}

    def describe(self) -> str:
        return f"{self.data.name}: {self.data.train.summary()}; {self.val.summary()}"

    def describe_recipe(self, recipe: Recipe) -> str:
        r = recipe
        return (f"{r.epochs} epochs, batch {r.batch_size}, input {r.input_size}, {r.optimizer} lr {r.lr:g} per "
                f"{r.lr_batch}, weight decay {r.weight_decay:g}, {schedule_text(r)}"
                + (f", EMA {r.ema_decay:g}" if r.ema_decay else ", no EMA")
                + (", SSD augmentation (photometric, zoom out, IoU crop" if r.box_augment == "ssd"
                   else ", mild augmentation (photometric") + f", hflip {r.hflip:g})"
                + ", default boxes at scales {:g} to {:g}".format(*r.box_scales))

    def format_test(self, test: dict) -> str:
        return f"mAP {100 * test['map']:.2f} %, AP50 {100 * test['map50']:.2f} %"
