"""Load and save weights; read state dicts written by torchvision and timm.

The models list their layers in the same order as torchvision's ``mobilenet_v2`` /
``mobilenet_v3_*`` and timm's ``mobilenetv1_100``, so a foreign state dict maps onto ours by
position. Every pair of tensors is checked for shape, and the first mismatch is reported by
name, so a checkpoint of another architecture, width or class count fails loudly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .files import load_torch, save_torch

# One key that only each format has, checked in this order.
FORMAT_MARKERS = {
    "mobilenets": "stem.conv.weight",
    "torchvision": "features.0.0.weight",
    "timm": "conv_stem.weight",
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file and return it as a dict; a bare state dict becomes ``{"model": sd}``.

    Training checkpoints of this package are dicts with ``model`` (the state dict) and more
    (``class_names``, ``model_args``, ``data``); ``state_dict`` is accepted as a synonym.
    """
    obj = load_torch(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return {**obj, "model": obj[key]}
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {"model": dict(obj)}
    raise ValueError(f"{path} holds no state dict (keys: {', '.join(map(str, list(obj)[:5]))})")


def detect_format(state_dict: Mapping[str, Tensor]) -> str:
    """``"mobilenets"``, ``"torchvision"`` or ``"timm"``, from the keys of a state dict."""
    for fmt, marker in FORMAT_MARKERS.items():
        if marker in state_dict:
            return fmt
    first = ", ".join(list(state_dict)[:3])
    raise ValueError(f"unrecognised weights (first keys: {first}); expected a state dict from mobilenets, "
                     "torchvision or timm")


def convert_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Return ``state_dict`` with ``model``'s keys, checking every shape on the way."""
    fmt = detect_format(state_dict)
    target = model.state_dict()
    what = _describe(model)
    if fmt == "mobilenets":
        for key, tensor in target.items():
            if key not in state_dict:
                raise ValueError(f"checkpoint does not fit {what}: it has no {key} {_shape(tensor)}")
            if state_dict[key].shape != tensor.shape:
                raise ValueError(
                    f"checkpoint does not fit {what}: {key} is {_shape(state_dict[key])} in the file, "
                    f"{_shape(tensor)} in the model"
                )
        extra = [k for k in state_dict if k not in target]
        if extra:
            raise ValueError(f"checkpoint does not fit {what}: unexpected key {extra[0]}")
        return dict(state_dict)
    source = list(state_dict.items())
    for (src_key, src), (key, tensor) in zip(source, target.items()):
        if src.shape != tensor.shape:
            raise ValueError(
                f"{fmt} checkpoint does not fit {what}: {src_key} is {_shape(src)}, "
                f"the model's {key} needs {_shape(tensor)}"
            )
    if len(source) != len(target):
        extra = source[len(target)][0] if len(source) > len(target) else list(target)[len(source)]
        raise ValueError(
            f"{fmt} checkpoint does not fit {what}: {len(source)} tensors in the file, {len(target)} in the "
            f"model (first unmatched: {extra})"
        )
    return {key: src for (_, src), key in zip(source, target)}


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file of any supported format into ``model``; return the whole checkpoint."""
    checkpoint = read_checkpoint(path)
    try:
        model.load_state_dict(convert_state_dict(checkpoint["model"], model))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return checkpoint


def save_weights(model: nn.Module, path: str | os.PathLike, **extra: Any) -> None:
    """Save ``model``'s state dict with its build arguments (and any ``extra`` fields), atomically."""
    args = getattr(model, "args", None)
    save_torch({"model": model.state_dict(), "model_args": args.to_dict() if args else None, **extra}, path)


def _describe(model: nn.Module) -> str:
    args = getattr(model, "args", None)
    if args is None:
        return type(model).__name__
    return f"{args.name} (width_mult={args.width_mult:g}, num_classes={args.num_classes}, in_chans={args.in_chans})"


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"

