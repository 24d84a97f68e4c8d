"""Named training recipes: every hyper-parameter of a run in one frozen record.

A recipe's values are defaults; the ``train`` command's options override them. Fields left
``None`` (``AUTO``) are decided from the data and the run's length by ``adapt.resolve`` before
training starts; the resolved recipe is what a checkpoint stores.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .detection.specs import DefaultBoxes, check_box_scales

AUTO = None  # a field the default recipe decides from the data (adapt.py)
SSD_BOX_SCALES = (DefaultBoxes.min_scale, DefaultBoxes.max_scale)  # SSD Sec. 2.2's s_min and s_max


@dataclass(frozen=True)
class OptimizerDefaults:
    """What an optimizer brings when a run asks for it: learning rate (at ``lr_batch``) and its constants."""

    lr: float
    lr_batch: int
    weight_decay: float
    momentum: float = 0.9
    rms_decay: float = 0.9
    eps: float = 1e-8


OPTIMIZERS: dict[str, OptimizerDefaults] = {
    # SGD with Nesterov momentum; lr 0.4 per 256 with warm-up, cosine decay and label smoothing
    "sgd": OptimizerDefaults(lr=0.4, lr_batch=256, weight_decay=5e-5),
    # decoupled weight decay as in Loshchilov & Hutter; 0.05 as timm's AdamW recipes
    "adamw": OptimizerDefaults(lr=2e-3, lr_batch=256, weight_decay=0.05),
    # TF-Slim's RMSprop as the MobileNet V1 paper trained it (Sec. 3.2): eps 1.0, lr 0.045 per 32
    "rmsprop_tf": OptimizerDefaults(lr=0.045, lr_batch=32, weight_decay=4e-5, eps=1.0),
    # torch RMSprop as torchvision's MobileNetV3 reference: eps 0.0316, lr 0.064 per 1024
    "rmsprop": OptimizerDefaults(lr=0.064, lr_batch=1024, weight_decay=1e-5, eps=0.0316),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    epochs: int
    batch_size: int | None  # AUTO: from the training set's size
    input_size: int | None  # AUTO: from the images' size
    optimizer: str | None  # one of OPTIMIZERS; AUTO: the task's (AdamW for classifiers, SGD for detectors)
    lr: float | None  # at ``lr_batch`` images per step, scaled linearly with the global batch; AUTO: adapt.lr_for
    lr_batch: int = 256
    momentum: float = 0.9
    rms_decay: float = 0.9
    eps: float = 1e-8
    weight_decay: float | None = 0.0  # AUTO: the optimizer's
    decay_depthwise: bool = False  # V1 Sec. 3.2: little or no weight decay on depthwise filters
    schedule: str = "step"  # "step" (x decay_rate every decay_epochs) | "cosine"
    lr_floor: float | None = 0.0  # cosine: the fraction of the peak it ends at; AUTO: detection/task.py
    decay_rate: float = 0.94
    decay_epochs: float = 2.0
    warmup_epochs: float | None = 0.0  # AUTO: a tenth of the run, 1 to 5 epochs
    label_smoothing: float = 0.0
    width_mult: float = 1.0
    dropout: float | None = None
    # augmentation: image folders use random resized crops (no smaller than min_crop of the
    # image, aspect 3/4 to 4/3); in-memory data (Fashion-MNIST) uses translation by up to pad
    # pixels. Both flip horizontally with probability hflip (0: never, for data where a mirror
    # image is another class) and erase a random rectangle with probability erase.
    min_crop: float | None = 0.25  # AUTO: milder for small images
    pad: int | None = 0  # AUTO: a twelfth of a small image's side
    hflip: float = 0.5
    erase: float = 0.0
    # classifiers: MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a batch's images and
    # labels, each its Beta(alpha, alpha) parameter (0: off); with both, each batch takes one of the
    # two at random, as torchvision's classification reference does
    mixup: float = 0.0
    cutmix: float = 0.0
    # detection: SSD's augmentation ("ssd": photometric, zoom out, IoU crop, flip) or only its
    # photometric distortion and flip ("mild"); AUTO (the default recipe): mild for short runs
    box_augment: str | None = "ssd"
    # detection: the smallest and largest default-box scale, as fractions of the input side (SSD
    # Sec. 2.2's s_min and s_max); AUTO: fitted to the training boxes
    box_scales: tuple[float, float] | None = SSD_BOX_SCALES
    eval_crop: float | None = 0.875  # centre crop of the evaluation transform (ImageNet's 224 / 256); AUTO
    ema_decay: float | None = 0.0  # 0 turns the exponential moving average of weights off; AUTO: follows the steps
    # classifiers: training batches over which the evaluated weights' BN statistics are recomputed
    # before each validation (precise_bn.py; 0: off, the running averages are used); AUTO: ~1,000 images
    bn_recompute: int | None = 0
    amp: bool = False  # bf16 autocast (CPU with native bf16, or CUDA); fp16 + scaler on older GPUs
    channels_last: bool = True
    compile: bool = False
    # fine-tuning (with ``--weights``): train the head only, or the backbone at a fraction of the lr
    freeze_backbone: bool = False
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer is not None:
            get_optimizer_defaults(self.optimizer)
        if self.box_augment not in (None, *BOX_AUGMENTS):
            raise ValueError(f"box-augment must be one of {', '.join(BOX_AUGMENTS)}, got {self.box_augment!r}")
        if self.box_scales is not None:
            check_box_scales(self.box_scales)
        ranges = {  # field: (low, high, low included); None values are AUTO
            "epochs": (1, math.inf, True), "batch_size": (1, math.inf, True), "input_size": (1, math.inf, True),
            "lr": (0, math.inf, False), "weight_decay": (0, math.inf, True), "warmup_epochs": (0, math.inf, True),
            "label_smoothing": (0, 1, True), "hflip": (0, 1, True), "min_crop": (0, 1, False),
            "erase": (0, 1, True), "mixup": (0, math.inf, True), "cutmix": (0, math.inf, True),
            "dropout": (0, 1, True), "eval_crop": (0, 1, False), "ema_decay": (0, 1, True),
            "pad": (0, math.inf, True), "lr_floor": (0, 1, True), "bn_recompute": (0, math.inf, True),
            "backbone_lr_scale": (0, math.inf, False),
        }
        for name, (low, high, closed) in ranges.items():
            value = getattr(self, name)
            if value is not None and not (low <= value <= high and (closed or value > low)):
                interval = f"{'[' if closed else '('}{low:g}, {high:g}]".replace("inf]", "inf)")
                raise ValueError(f"{name.replace('_', '-')} must be in {interval}, got {value!r}")

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_optimizer(self, name: str) -> Recipe:
        """This recipe with another optimizer and that optimizer's own defaults (lr, eps, decay...);
        a learning rate left ``AUTO`` stays so (the default recipe decides it for any optimizer)."""
        defaults = dataclasses.asdict(get_optimizer_defaults(name))
        if self.lr is AUTO:
            defaults["lr"] = AUTO
        return dataclasses.replace(self, optimizer=name, **defaults)

    @property
    def unresolved(self) -> list[str]:
        """The fields still to be decided from the data."""
        return [name for name in AUTO_FIELDS if getattr(self, name) is None]


AUTO_FIELDS = ("optimizer", "weight_decay", "batch_size", "input_size", "lr", "warmup_epochs", "min_crop", "pad",
               "eval_crop", "ema_decay", "bn_recompute", "box_augment", "box_scales")
BOX_AUGMENTS = ("ssd", "mild")


def get_optimizer_defaults(name: str) -> OptimizerDefaults:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name]


RECIPES: dict[str, Recipe] = {
    "default": Recipe(
        name="default",
        about="adapts to the run: AdamW at 0.008 per step (SGD Nesterov for detectors), warm-up then cosine to "
        "zero over the epochs asked for, batch from the training set's size, EMA over the last tenth of the steps, "
        "label smoothing 0.1, input size, crops and evaluation crop from the images' size, batch-norm statistics "
        "recomputed for the evaluated weights, bf16 autocast where the hardware has it",
        epochs=30,
        batch_size=AUTO,
        input_size=AUTO,
        optimizer=AUTO,
        lr=AUTO,
        weight_decay=AUTO,
        schedule="cosine",
        lr_floor=AUTO,
        warmup_epochs=AUTO,
        label_smoothing=0.1,
        min_crop=AUTO,
        pad=AUTO,
        eval_crop=AUTO,
        ema_decay=AUTO,
        bn_recompute=AUTO,
        box_augment=AUTO,
        box_scales=AUTO,
        amp=True,
    ),
    "paper": Recipe(
        name="paper",
        about="MobileNet V1 Sec. 3.2 / Inception V3: RMSprop (decay 0.9, momentum 0.9, eps 1.0), "
        "lr 0.045 per 32 images decayed x0.94 every 2 epochs, no decay on depthwise filters and BN, "
        "no label smoothing, light augmentation",
        epochs=100,
        batch_size=96,
        input_size=224,
        optimizer="rmsprop_tf",
        lr=0.045,
        lr_batch=32,  # Inception V3 trained 32 images per asynchronous replica at this rate
        eps=1.0,
        weight_decay=4e-5,  # TF-Slim's MobileNet V1 default
        schedule="step",
        decay_rate=0.94,
        decay_epochs=2.0,
        min_crop=0.35,
    ),
    "torchvision-v2": Recipe(
        name="torchvision-v2",
        about="torchvision's MobileNetV2 reference: SGD momentum 0.9, lr 0.045 per 256, x0.98 every epoch, "
        "weight decay 4e-5, 300 epochs",
        epochs=300,
        batch_size=256,
        input_size=224,
        optimizer="sgd",
        lr=0.045,
        weight_decay=4e-5,
        decay_depthwise=True,
        schedule="step",
        decay_rate=0.98,
        decay_epochs=1.0,
        min_crop=0.08,
    ),
    "torchvision-v3": Recipe(
        name="torchvision-v3",
        about="torchvision's MobileNetV3 reference: RMSprop (alpha 0.9, eps 0.0316), lr 0.064 per 1024, "
        "x0.973 every 2 epochs, weight decay 1e-5, random erasing 0.2, 600 epochs",
        epochs=600,
        batch_size=128,
        input_size=224,
        optimizer="rmsprop",
        lr=0.064,
        lr_batch=1024,
        eps=0.0316,
        weight_decay=1e-5,
        decay_depthwise=True,
        schedule="step",
        decay_rate=0.973,
        decay_epochs=2.0,
        min_crop=0.08,
        erase=0.2,
    ),
    "fashion-mnist": Recipe(
        name="fashion-mnist",
        about="Fashion-MNIST from scratch on a CPU: 28x28 images upscaled to 72 (rho = 9/28), SGD nesterov "
        "with cosine decay, weight decay 5e-4 (none on depthwise filters and BN), label smoothing, "
        "translation by 1 px, flips, EMA of weights, bf16 autocast; 40 epochs: 94.64 % test top-1 (94.87 % "
        "with flip TTA) in 51 to 69 min on 2 AMX cores (two host models) with the fused BN kernel "
        "(docs/results.md)",
        epochs=40,
        batch_size=256,
        input_size=72,
        width_mult=1.0,
        optimizer="sgd",
        lr=0.4,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
        pad=1,
        ema_decay=0.999,
        amp=True,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
