"""The default recipe's rules: hyper-parameters decided from the data and the run's length.

A recipe field left ``AUTO`` is filled in here, from what the data says of itself
(``DataFacts``) and from the epochs asked for, before the run starts; the resolved values
are printed and stored in the checkpoint, so a resumed run never decides again.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .recipes import SSD_BOX_SCALES, Recipe, get_optimizer_defaults

SMALL_IMAGE = 64  # images at most this side (digits, icons, CIFAR) are upscaled and barely cropped
MIN_INPUT, MAX_INPUT = 64, 224
# SSD's zoom out and IoU crop pay off over long schedules (Liu et al. train 100+ epochs); in a
# run of a few epochs they shrink and cut the objects the detector has yet to learn at all
# (docs/results.md section 10: 3x to 4x the mAP after the same 4 epochs without them)
LONG_DETECTION_RUN = 30  # epochs
CLASSIFIER_STEPS = 120  # steps per epoch the default's batch leaves at least
LR_FLOOR_BATCH = 64  # SGD: below this global batch the lr per step no longer shrinks with it
MIN_PROCESS_BATCH = 4  # images per process: fewer leave batch norm's statistics to noise
BN_RECOMPUTE_IMAGES = 1024  # training images per recomputation of the BN statistics (per process)
# AdamW normalises each step by the gradients' own scale, so the default keeps its lr per step
# whatever the batch: at batch 32 on the shapes folder 0.001 / 0.002 / 0.004 / 0.008 per step gave
# 83.8 / 93.8 / 97.4 / 98.4 % in 8 epochs, SGD's best 94.1 % (docs/results.md section 11)
ADAMW_STEP_LR = 0.008


@dataclass(frozen=True)
class DataFacts:
    """What a recipe may adapt to: the training set's size and its images' size."""

    train_images: int
    image_size: int  # typical shorter side of the images, in pixels
    channels: int


def input_size_for(image_size: int) -> int:
    """Three times the images' side, rounded up to a multiple of 32, between 64 and 224.

    At 32 px a MobileNet's last layers see a 1x1 map (five stride-2 layers), so small images
    are upscaled (rho > 1 relative to their own size); photos are used at 224, V1 Sec. 3.4.
    Three, not two: 32-px shapes on clutter learned 3 to 9 points more in 8 epochs at 96 px
    than at 64, while 20-px digits gained nothing past 64 (docs/results.md section 11).
    """
    return min(MAX_INPUT, max(MIN_INPUT, 32 * math.ceil(3 * image_size / 32)))


def batch_size_for(train_images: int, world_size: int = 1, steps: int = 60, smallest: int = 16,
                   largest: int = 128) -> int:
    """A power of two per process that leaves at least ~``steps`` steps for ``train_images`` (an
    epoch's images; a detector passes its whole run's), up to ``largest``.

    The floor, ``smallest``, is for the images of a step in all processes (at least
    ``MIN_PROCESS_BATCH`` each), so that more processes on the same data keep the steps and the
    schedule of one: on 2 CPU cores, 2 processes of batch 4 trained the detector of
    docs/results.md section 10 to 32.6 % mAP in 9 epochs in 0.88x the time that 1 process of
    batch 8 took to reach 31.6 %.
    """
    per_process = train_images / (steps * world_size)
    least = max(MIN_PROCESS_BATCH, 2 ** math.ceil(math.log2(smallest / world_size)))
    return int(min(largest, max(least, 2 ** math.floor(math.log2(max(per_process, 1))))))


def steps_per_epoch(train_images: int, batch: int, world_size: int = 1) -> int:
    """Optimizer steps in an epoch of ``train_images`` at ``batch`` images a process (at least one)."""
    return max(1, train_images // (batch * world_size))


def ema_decay_for(total_steps: int) -> float:
    """An average over about the last tenth of the run's steps (decay 1 - 10 / steps), in [0.9, 0.9999]."""
    return round(min(0.9999, max(0.9, 1 - 10 / max(total_steps, 1))), 4)


def lr_for(optimizer: str, global_batch: int, lr_batch: int) -> float:
    """The default's learning rate at ``lr_batch`` images for a run of ``global_batch`` images a step."""
    if optimizer == "adamw":
        return ADAMW_STEP_LR * lr_batch / global_batch
    return get_optimizer_defaults(optimizer).lr * max(1.0, LR_FLOOR_BATCH / global_batch)


def resolve(recipe: Recipe, facts: DataFacts, world_size: int = 1, optimizer: str = "adamw") -> Recipe:
    """``recipe`` with every ``AUTO`` field decided (``optimizer``: the task's); fields already set are kept."""
    if recipe.optimizer is None:  # the optimizer's constants; its lr and weight decay are decided below
        constants = dataclasses.asdict(get_optimizer_defaults(optimizer))
        del constants["lr"], constants["weight_decay"]
        recipe = recipe.replace(optimizer=optimizer, **constants)
    small = facts.image_size <= SMALL_IMAGE
    # ~120 steps an epoch: a small folder's short run is short of steps (section 11: batch 32 at the
    # lr per step of batch 64 gave shapes +4 to +6 points)
    batch = recipe.batch_size or batch_size_for(facts.train_images, world_size, steps=CLASSIFIER_STEPS)
    total_steps = recipe.epochs * steps_per_epoch(facts.train_images, batch, world_size)
    rules = {
        "input_size": lambda: input_size_for(facts.image_size),
        "batch_size": lambda: batch,
        "weight_decay": lambda: get_optimizer_defaults(recipe.optimizer).weight_decay,
        "lr": lambda: lr_for(recipe.optimizer, batch * world_size, recipe.lr_batch),
        "warmup_epochs": lambda: min(5.0, max(1.0, round(recipe.epochs / 10))),
        "lr_floor": lambda: 0.0,  # classifiers: the cosine ends at zero (detectors decide theirs first)
        "ema_decay": lambda: ema_decay_for(total_steps),
        # a short run's running BN averages lag its weights (precise_bn.py): ~1,000 images recompute them
        "bn_recompute": lambda: math.ceil(min(BN_RECOMPUTE_IMAGES, facts.train_images / world_size) / batch),
        # a digit or an icon fills its small frame: a 25 % crop can cut it away, a centre crop too;
        # crops of 90 % shift and zoom it slightly (section 11: +0.6 on digits, +3 to +14 on shapes
        # against 50 %; no crops at all trained worse)
        "min_crop": lambda: 0.9 if small else 0.25,
        "pad": lambda: max(1, round(facts.image_size / 12)) if small else 0,  # in-memory data: translation
        "eval_crop": lambda: 1.0 if small else 0.875,
        "box_augment": lambda: "ssd" if recipe.epochs >= LONG_DETECTION_RUN else "mild",
        "box_scales": lambda: SSD_BOX_SCALES,  # detectors fit theirs to the boxes first (detection/task.py)
    }
    return recipe.replace(**{name: rule() for name, rule in rules.items() if getattr(recipe, name) is None})


def schedule_text(r: Recipe) -> str:
    """The learning-rate schedule in words, e.g. "cosine schedule to 0.6 of the peak after 1 warm-up epoch(s)"."""
    floor = f" to {r.lr_floor:g} of the peak" if r.schedule == "cosine" and r.lr_floor else ""
    return f"{r.schedule} schedule{floor}" + (f" after {r.warmup_epochs:g} warm-up epoch(s)" if r.warmup_epochs else "")


def describe(recipe: Recipe, in_memory: bool = False) -> str:
    """One line of the values a run trains with (printed at its start)."""
    r = recipe
    parts = [
        f"{r.epochs} epochs", f"batch {r.batch_size}", f"input {r.input_size}",
        f"{r.optimizer} lr {r.lr:g} per {r.lr_batch}", f"weight decay {r.weight_decay:g}",
        schedule_text(r),
        f"label smoothing {r.label_smoothing:g}", f"EMA {r.ema_decay:g}" if r.ema_decay else "no EMA",
        *([f"BN statistics recomputed on {r.bn_recompute} batches"] if r.bn_recompute else []),
        f"hflip {r.hflip:g}", f"translation by {r.pad} px" if in_memory else f"min crop {r.min_crop:g}",
        f"erase {r.erase:g}",
    ]
    parts += [f"{name} {alpha:g}" for name, alpha in (("mixup", r.mixup), ("cutmix", r.cutmix)) if alpha]
    if r.dropout is not None:
        parts.append(f"dropout {r.dropout:g}")
    if not in_memory:
        parts.append(f"eval crop {r.eval_crop:g}")
    if r.freeze_backbone:
        parts.append("backbone frozen")
    elif r.backbone_lr_scale != 1:
        parts.append(f"backbone lr x{r.backbone_lr_scale:g}")
    return ", ".join(parts)
