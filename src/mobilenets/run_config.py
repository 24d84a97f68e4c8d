"""A training run's configuration: a recipe plus overrides, or the one stored in ``last.pt``."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .files import load_torch
from .recipes import Recipe, get_recipe

CHECKPOINT_FORMAT = "mobilenets-train-1"


class TrainingError(ValueError):
    """A run that cannot go on (diverged, bad resume); its message is for the user."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored in its checkpoints."""

    model: str
    data: str
    out: str
    recipe: Recipe
    seed: int = 0
    device: str = "cpu"
    val_split: float | None = None
    in_chans: int | None = None
    workers: int = 0
    subset: int | None = None  # first N training images only (quick runs, tests)
    weights: str | None = None  # start from these weights (fine-tuning) instead of from scratch
    weights_backbone: str | None = None  # detectors: start the backbone from a classifier's weights
    val_data: str | None = None  # detection: the validation annotations (COCO JSON)
    reduced_tail: bool = False  # detectors on V3: C4-C5 halved

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        recipe = dict(d["recipe"])
        if "flip" in recipe:  # checkpoints written before flips became a probability
            recipe["hflip"] = 0.5 if recipe.pop("flip") else 0.0
        return cls(**{**d, "recipe": Recipe(**recipe)})


# Recipe fields only one kind of model uses: asking for them on the other is a mistake worth a message.
CLASSIFIER_ONLY = ("erase", "mixup", "cutmix", "dropout", "bn_recompute")
DETECTOR_ONLY = ("box_scales",)

# These may change when a run is resumed; everything else must match the checkpoint.
RESUMABLE_OVERRIDES = ("epochs", "device", "workers", "out")
PATH_FIELDS = ("data", "val_data", "weights", "weights_backbone")


def make_config(
    model: str, data: str, out: str, recipe: str = "default", *, resume: bool = False, **overrides: Any
) -> TrainConfig:
    """Build a run's config from a recipe and overrides (``None`` keeps the recipe's value).

    Another ``optimizer`` brings its own defaults (learning rate, epsilon, weight decay...),
    which the other overrides may then change. With ``resume`` the config comes from
    ``out/last.pt``; overrides may only extend the epochs or change device and workers.
    """
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    recipe_overrides = {k: v for k, v in overrides.items() if k in recipe_fields}
    run_overrides = {k: v for k, v in overrides.items() if k not in recipe_fields and v is not None}
    if resume:
        last = Path(out) / "last.pt"
        if not last.is_file():
            raise TrainingError(f"--resume: no checkpoint at {last}")
        saved = TrainConfig.from_dict(read_train_checkpoint(last)["config"])
        wanted = {"model": model, "data": data, **run_overrides, **recipe_overrides}
        if recipe != "default":  # the default is what a resume without --recipe asks for
            wanted["name"] = recipe
        for key, value in wanted.items():
            if value is None or key in RESUMABLE_OVERRIDES:
                continue
            old = getattr(saved.recipe, key) if key in recipe_fields else getattr(saved, key)
            if key in PATH_FIELDS and isinstance(old, str) and isinstance(value, str) and os.path.exists(value):
                old, value = os.path.realpath(old), os.path.realpath(value)  # data and ./data/ are one folder
            if old != value:
                raise TrainingError(f"--resume: {'recipe' if key == 'name' else key} is {old!r} in {last}, not "
                                    f"{value!r}; start a new --out instead")
        changes = {k: v for k, v in run_overrides.items() if k in RESUMABLE_OVERRIDES}
        recipe = saved.recipe.replace(epochs=overrides.get("epochs"))
        return dataclasses.replace(saved, out=out, recipe=recipe, **changes)
    from .registry import is_detector  # the registry builds models; the config only asks it this

    detector = is_detector(model)
    if run_overrides.get("weights_backbone") and ("weights" in run_overrides or not detector):
        raise TrainingError("--weights-backbone starts a detector's backbone from a classifier's weights; "
                            + ("give --weights or --weights-backbone" if "weights" in run_overrides else
                               f"{model} is a classifier: use --weights"))
    kinds = ("classifiers", "detector") if detector else ("detectors", "classifier")
    misplaced = [k for k in (CLASSIFIER_ONLY if detector else DETECTOR_ONLY) if recipe_overrides.get(k)]
    if misplaced:
        raise TrainingError(f"--{misplaced[0].replace('_', '-')} is for {kinds[0]}; {model} is a {kinds[1]}")
    base = get_recipe(recipe)
    optimizer = recipe_overrides.pop("optimizer", None)
    if optimizer is not None and optimizer != base.optimizer:
        base = base.with_optimizer(optimizer)
    return TrainConfig(model=model, data=data, out=out, recipe=base.replace(**recipe_overrides), **run_overrides)


def read_train_checkpoint(path: Path) -> dict:
    ckpt = load_torch(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a mobilenets training checkpoint")
    return ckpt
