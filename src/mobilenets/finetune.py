"""Fine-tuning: which layers are the backbone, freezing it, and training it at a smaller rate.

The backbone is the stem and the blocks (``MobileNet.forward_features``), a detector's too
(``backbone.stem``, ``backbone.blocks``: what a classifier's weights file can start); the head
is the rest: a classifier's pool, V3's hidden FC layer and the classifier, a detector's extra
layers and prediction heads.
"""

from __future__ import annotations

from torch import nn

BACKBONE = ("stem", "blocks")
DETECTOR_BACKBONE = "backbone"  # the detector's module that holds the classifier's stem and blocks


def is_backbone(name: str) -> bool:
    """Whether a module or parameter (by its qualified name) belongs to the backbone."""
    parts = name.split(".")
    if parts[0] == DETECTOR_BACKBONE:
        parts = parts[1:]
    return bool(parts) and parts[0] in BACKBONE


def freeze_backbone(model: nn.Module) -> int:
    """Stop gradients to the backbone; return how many parameters are left to train.

    Its batch-norm statistics stay frozen too, as long as training switches modes with
    ``train_mode`` (a frozen backbone runs in eval mode).
    """
    if not any(is_backbone(name) for name, _ in model.named_modules()):
        raise ValueError(f"{type(model).__name__} has no backbone (stem and blocks) to freeze")
    for name, p in model.named_parameters():
        if is_backbone(name):
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_mode(model: nn.Module, frozen_backbone: bool) -> None:
    """``model.train()``, but a frozen backbone stays in eval mode (its BN statistics fixed)."""
    model.train()
    if frozen_backbone:
        for name, module in model.named_modules():
            if is_backbone(name):
                module.eval()
