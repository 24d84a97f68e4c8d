"""Load and save weights; read state dicts written by torchvision and timm.

The models list their layers in the same order as torchvision's ``mobilenet_v2`` /
``mobilenet_v3_*`` and timm's ``mobilenetv1_100``, so a foreign state dict maps onto ours by
position. Every pair of tensors is checked for shape, and the first mismatch is reported by
name, so a checkpoint of another architecture, width or class count fails loudly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .files import is_safetensors, load_safetensors, load_torch, save_torch
from .state_order import in_module_order

# Keys that only each format has (classifier, detector), checked in this order.
FORMAT_MARKERS = {
    "mobilenets": ("stem.conv.weight", "backbone.stem.conv.weight"),
    "torchvision": ("features.0.0.weight", "backbone.features.0.0.0.weight"),
    "timm": ("conv_stem.weight",),
}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file (``torch.save`` or safetensors) and return it as a dict; a bare state
    dict becomes ``{"model": sd}``.

    Training checkpoints of this package are dicts with ``model`` (the state dict) and more
    (``class_names``, ``model_args``, ``data``). Other trainers' files are read as timm's
    ``load_state_dict`` reads them: the EMA weights where the file has them (``state_dict_ema``,
    ``model_ema``), else ``state_dict`` or ``model``; and the wrappers' key prefixes are dropped
    (``module.`` from DistributedDataParallel, ``_orig_mod.`` from ``torch.compile``).
    """
    from .exported import exported_format  # (it imports the registry, which imports this module)

    if is_safetensors(path):
        return {"model": _in_module_order(_unwrapped(load_safetensors(path)))}
    fmt = os.path.isfile(path) and exported_format(path)
    if fmt:
        raise ValueError(f"{path} is an exported model ({fmt}), not weights: give the training checkpoint or "
                         "the weights it was exported from")
    obj = load_torch(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            return {**obj, "model": _unwrapped(obj[key])}
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return {"model": _unwrapped(obj)}
    raise ValueError(f"{path} holds no state dict (keys: {', '.join(map(str, list(obj)[:5]))})")


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile


def _unwrapped(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` without the prefix a wrapper put on every key (repeatedly: DDP of a compiled model)."""
    state = dict(state_dict)
    while state and (prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _in_module_order(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A foreign state dict in its model's order (this package's own files map by name)."""
    try:
        foreign = detect_format(state_dict) != "mobilenets"
    except ValueError:  # unrecognised: reported where the file is mapped onto a model
        return state_dict
    return in_module_order(state_dict) if foreign else state_dict


def detect_format(state_dict: Mapping[str, Tensor]) -> str:
    """``"mobilenets"``, ``"torchvision"`` or ``"timm"``, from the keys of a state dict."""
    for fmt, markers in FORMAT_MARKERS.items():
        if any(marker in state_dict for marker in markers):
            return fmt
    first = ", ".join(list(state_dict)[:3])
    raise ValueError(f"unrecognised weights (first keys: {first}); expected a state dict from mobilenets, "
                     "torchvision or timm")


TIMM_BN_EPS = 1e-5  # timm's MobileNets (V3 included; the V3 reference code and torchvision use 1e-3)
STEM_KEY = "stem.conv.weight"
CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
CLASS_HEAD = "head.classification_head."  # a detector's class logits, one layer per feature map


def convert_state_dict(
    state_dict: Mapping[str, Tensor], model: nn.Module, *, finetune: bool = False
) -> tuple[dict[str, Tensor], list[str]]:
    """Return ``state_dict`` with ``model``'s keys, checking every shape on the way, and notes.

    With ``finetune`` two mismatches are adapted instead of refused, each with a note: a
    classifier for another number of classes is left out (the model keeps its freshly
    initialised one), and a stem for another number of input channels is adapted
    (``adapt_input_conv``). Any other mismatch fails with the tensor named.
    """
    converted, notes = {}, []
    fmt, pairs = _pairs(state_dict, model)
    for src_key, src, key, tensor in pairs:
        if finetune and src.shape != tensor.shape:
            if key in CLASSIFIER_KEYS and src.shape[1:] == tensor.shape[1:]:
                if key == CLASSIFIER_KEYS[0]:
                    notes.append(f"classifier re-initialised: {src.shape[0]} -> {tensor.shape[0]} classes")
                continue
            if key.startswith(CLASS_HEAD) and src.shape[1:] == tensor.shape[1:]:
                classes = getattr(getattr(model, "head", None), "classification_head", None)
                note = f"classification head re-initialised for {classes.num_columns} classes" if classes else ""
                if note and note not in notes:
                    notes.append(note)
                continue
            if key.endswith(STEM_KEY) and src.shape[0] == tensor.shape[0] and src.shape[2:] == tensor.shape[2:]:
                src = adapt_input_conv(src, tensor.shape[1])
                how = "RGB filters summed" if tensor.shape[1] == 1 else "filters repeated and rescaled"
                notes.append(f"stem adapted: {src_key} from {tuple(state_dict[src_key].shape)[1]} to "
                             f"{tensor.shape[1]} input channel(s) ({how}, as timm does)")
        if src.dim() == 4 and tensor.dim() == 2 and src.shape == (*tensor.shape, 1, 1):
            src = src.flatten(1)  # timm's V3 head: a 1x1 convolution where ours (as torchvision's) is linear
        if src.shape != tensor.shape:
            raise ValueError(
                f"{fmt} checkpoint does not fit {_describe(model)}: {src_key} is {_shape(src)} in the file, "
                f"the model's {key} needs {_shape(tensor)}"
            )
        converted[key] = src
    return converted, notes


def _pairs(state_dict: Mapping[str, Tensor], model: nn.Module) -> tuple[str, list[tuple[str, Tensor, str, Tensor]]]:
    """The file's format and its (file key, file tensor, model key, model tensor) pairs: by name
    for this package's files, by position for torchvision's and timm's (same layer order)."""
    fmt = detect_format(state_dict)
    target = model.state_dict()
    what = _describe(model)
    if fmt == "mobilenets":
        missing = [k for k in target if k not in state_dict]
        if missing:
            raise ValueError(f"checkpoint does not fit {what}: it has no {missing[0]} {_shape(target[missing[0]])}")
        extra = [k for k in state_dict if k not in target]
        if extra:
            raise ValueError(f"checkpoint does not fit {what}: unexpected key {extra[0]}")
        return fmt, [(k, state_dict[k], k, t) for k, t in target.items()]
    source = list(state_dict.items())
    if not any(k.endswith(".num_batches_tracked") for k in state_dict):  # optional, as BatchNorm treats it
        target = {k: t for k, t in target.items() if not k.endswith(".num_batches_tracked")}
    if len(source) != len(target):
        # the first tensor out of step names the layer where the architectures part
        first = next((f"first difference: {sk} {_shape(st)} in the file, {k} {_shape(t)} in the model"
                      for (sk, st), (k, t) in zip(source, target.items()) if st.shape != t.shape), None)
        extra = source[len(target)][0] if len(source) > len(target) else list(target)[len(source)]
        raise ValueError(
            f"{fmt} checkpoint does not fit {what}: {len(source)} tensors in the file, {len(target)} in the "
            f"model ({first or f'first unmatched: {extra}'})"
        )
    return fmt, [(sk, st, k, t) for (sk, st), (k, t) in zip(source, target.items())]


def adapt_input_conv(weight: Tensor, in_chans: int) -> Tensor:
    """A first-layer filter bank for ``in_chans`` input channels from one for another count.

    Grey from RGB sums the colour filters (a grey image is R = G = B, so the response is the
    same); otherwise the filters are repeated and scaled to keep the response's magnitude, as
    timm's ``adapt_input_conv`` does.
    """
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file of any supported format into ``model``; return the whole checkpoint."""
    checkpoint = read_checkpoint(path)
    _load(model, checkpoint["model"], path, finetune=False)
    return checkpoint


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Start ``model`` from a weights file for fine-tuning; return what had to be adapted.

    Everything is loaded but a classifier for another class count (re-initialised) and a stem
    for another channel count (adapted); see ``convert_state_dict``.
    """
    return _load(model, read_checkpoint(path)["model"], path, finetune=True)


def _load(model: nn.Module, state: Mapping[str, Tensor], path: str | os.PathLike, finetune: bool) -> list[str]:
    try:
        converted, notes = convert_state_dict(state, model, finetune=finetune)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.load_state_dict(converted, strict=not finetune)
    if detect_format(state) == "timm":
        notes += _take_timm_bn_eps(model)
    return notes


def _take_timm_bn_eps(model: nn.Module) -> list[str]:
    """Give ``model`` timm's batch-norm epsilon, so that timm's weights give timm's outputs (its V3
    normalises with 1e-5 where the reference code, torchvision and this package use 1e-3)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = sorted({m.eps for m in norms})
    if before == [TIMM_BN_EPS]:
        return []
    for m in norms:
        m.eps = TIMM_BN_EPS
    if getattr(model, "args", None) is not None:  # the checkpoints it is saved in rebuild it so
        model.args = dataclasses.replace(model.args, bn_eps=TIMM_BN_EPS)
    return [f"batch-norm eps {TIMM_BN_EPS:g} as timm's (the model's was {', '.join(f'{e:g}' for e in before)})"]


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

