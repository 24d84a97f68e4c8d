"""Named training recipes: every hyper-parameter of a run in one frozen record.

A recipe's values are defaults; the ``train`` command's options override them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    epochs: int
    batch_size: int
    input_size: int
    optimizer: str  # "rmsprop_tf" | "rmsprop" | "sgd" | "adamw"
    lr: float  # at ``lr_batch`` images per step; scaled linearly with the global batch
    lr_batch: int = 256
    momentum: float = 0.9
    rms_decay: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 0.0
    decay_depthwise: bool = False  # V1 Sec. 3.2: little or no weight decay on depthwise filters
    schedule: str = "step"  # "step" (x decay_rate every decay_epochs) | "cosine"
    decay_rate: float = 0.94
    decay_epochs: float = 2.0
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    width_mult: float = 1.0
    dropout: float | None = None
    # augmentation: image folders use random resized crops (no smaller than min_crop of the
    # image) and flips; in-memory data (Fashion-MNIST) uses translation by up to pad pixels,
    # flips and random erasing with probability erase.
    min_crop: float = 0.25
    pad: int = 0
    flip: bool = True
    erase: float = 0.0
    ema_decay: float = 0.0  # 0 turns the exponential moving average of weights off
    amp: bool = False  # bf16 autocast (CPU with native bf16, or CUDA); fp16 + scaler on older GPUs
    channels_last: bool = True
    compile: bool = False

    def replace(self, **changes) -> Recipe:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


RECIPES: dict[str, Recipe] = {
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
        about="Fashion-MNIST from scratch on a CPU: 28x28 images upscaled 2x to 56 (rho = 1/4), SGD nesterov "
        "with cosine decay, weight decay 5e-4 (none on depthwise filters and BN), label smoothing, "
        "translation/flip/erasing, EMA of weights, bf16 autocast; 94.43 % in 73 min on 2 cores (docs/results.md)",
        epochs=30,
        batch_size=128,
        input_size=56,
        width_mult=1.0,
        optimizer="sgd",
        lr=0.4,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1.0,
        label_smoothing=0.1,
        pad=2,
        flip=True,
        erase=0.25,
        ema_decay=0.999,
        amp=True,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
