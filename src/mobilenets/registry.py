"""The explicit registry of model names and ``create_model``, the one public constructor."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass

from torch import nn

from . import specs
from .layers import ACTIVATIONS
from .model import FeatureExtractor, MobileNet
from .specs import Bottleneck, ModelSpec, Separable
from .weights import load_pretrained

MODELS: dict[str, ModelSpec] = {
    "mobilenet_v1": specs.MOBILENET_V1,
    "mobilenet_v1_conv": specs.MOBILENET_V1_CONV,
    "mobilenet_v1_shallow": specs.MOBILENET_V1_SHALLOW,
    "mobilenet_v2": specs.MOBILENET_V2,
    "mobilenet_v3_large": specs.MOBILENET_V3_LARGE,
    "mobilenet_v3_small": specs.MOBILENET_V3_SMALL,
}


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to build a model again (stored in checkpoints)."""

    name: str
    width_mult: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    dropout: float | None = None
    act: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def create_model(
    name: str,
    *,
    width_mult: float = 1.0,
    num_classes: int = 1000,
    in_chans: int = 3,
    dropout: float | None = None,
    act: str | None = None,
    weights: str | os.PathLike | None = None,
    features_only: bool = False,
) -> nn.Module:
    """Build a MobileNet by name.

    Args:
        name: one of ``list_models()``.
        width_mult: the width multiplier alpha (V1 Sec. 3.3); any number > 0. Channels are
            rounded with ``layers.make_divisible``.
        num_classes: classifier outputs.
        in_chans: input channels (1 for grey images).
        dropout: dropout before the classifier; ``None`` keeps the model's default
            (V1: 0, V2 and V3: 0.2).
        act: activation of the V1 and V2 layers, ``"relu6"`` (default) or ``"relu"``.
        weights: path to a state dict saved by this package, torchvision or timm. Everything
            is loaded but a classifier for another ``num_classes`` (re-initialised) and a stem
            for another ``in_chans`` (RGB filters summed for grey input); one warning says so.
        features_only: return a backbone whose forward gives the maps at strides 4, 8, 16, 32.

    The input resolution is not an argument: any input of at least 32x32 works, and the
    resolution multiplier rho is the input size / 224 (V1 Sec. 3.4).
    """
    args = ModelArgs(name, _check_width(width_mult), num_classes, in_chans, dropout, act)
    spec = get_spec(name)
    _check_args(args, spec)
    model = MobileNet(
        spec, width_mult=args.width_mult, num_classes=num_classes, in_chans=in_chans, dropout=dropout, act=act
    )
    model.args = args
    if weights is not None:
        notes = load_pretrained(model, weights)
        if notes:  # one warning, whatever had to be adapted
            warnings.warn(f"{weights}: " + "; ".join(notes), stacklevel=2)
    return FeatureExtractor(model) if features_only else model


def _check_width(width_mult: object) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, numbers.Real):
        raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
    if not math.isfinite(width_mult) or width_mult <= 0:
        raise ValueError(f"width_mult must be a finite number > 0, got {width_mult!r}")
    return float(width_mult)


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_args(args: ModelArgs, spec: ModelSpec) -> None:
    if not _is_count(args.num_classes):
        raise ValueError(f"num_classes must be an integer >= 1, got {args.num_classes!r}")
    if not _is_count(args.in_chans):
        raise ValueError(f"in_chans must be an integer >= 1, got {args.in_chans!r}")
    if args.dropout is not None and not (isinstance(args.dropout, numbers.Real) and 0 <= args.dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {args.dropout!r}")
    if args.act is not None:
        if args.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {args.act!r}; known: {', '.join(ACTIVATIONS)}")
        if not any(isinstance(r, (Separable, Bottleneck)) for r in spec.rows):
            raise ValueError(f"{args.name} sets its activation per layer ({spec.paper}); act cannot be changed")
