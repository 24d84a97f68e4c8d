"""The layer order of torchvision's and timm's MobileNet state dicts, for files that do not keep it.

Foreign weights map onto this package's models by position (``weights.py``), and a safetensors
file stores its tensors sorted by name. The order is recovered from the names: a key's parts
compare as numbers, or by their rank among the layers of their scope. timm numbers a block's
batch norms after its convolutions (``bn1`` follows the first, ``bn2`` the second), so each kind of
timm scope has its own order, told apart by a layer only that kind has.
"""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor

TIMM_SCOPES = (  # (a layer only this kind of scope has, its layers in order)
    ("conv_stem", ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier")),  # the network
    ("conv_pwl", ("conv_pw", "bn1", "conv_dw", "bn2", "se", "conv_pwl", "bn3")),  # inverted residual
    ("conv_dw", ("conv_dw", "bn1", "se", "conv_pw", "bn2")),  # depthwise-separable
    ("conv_reduce", ("conv_reduce", "conv_expand")),  # squeeze-and-excitation
    ("conv", ("conv", "bn1")),  # convolution, batch norm, activation (torchvision's V2 blocks: "conv")
)
OTHER_SCOPES = (  # torchvision's MobileNets and SSDLite, then a layer's own tensors
    "backbone", "features", "extra", "block", "fc1", "fc2", "head", "classification_head", "regression_head",
    "module_list", "classifier", "weight", "bias", "running_mean", "running_var", "num_batches_tracked",
)


def in_module_order(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` of a torchvision or timm MobileNet in the order its model registers the tensors."""
    scopes: dict[str, set[str]] = defaultdict(set)  # a scope's key prefix -> the names under it
    for key in state_dict:
        parts = key.split(".")
        for i, part in enumerate(parts):
            scopes[".".join(parts[:i])].add(part)

    def rank(scope: str, name: str) -> tuple[int, int]:
        if name.isdigit():
            return 0, int(name)
        order = next((names for marker, names in TIMM_SCOPES if marker in scopes[scope]), OTHER_SCOPES)
        if name not in order:
            raise ValueError(f"unrecognised weights: cannot place {scope + '.' if scope else ''}{name} "
                             "(not a layer of torchvision's or timm's MobileNets)")
        return 1, order.index(name)

    def position(key: str) -> list[tuple[int, int]]:
        parts = key.split(".")
        return [rank(".".join(parts[:i]), part) for i, part in enumerate(parts)]

    return dict(sorted(state_dict.items(), key=lambda item: position(item[0])))
