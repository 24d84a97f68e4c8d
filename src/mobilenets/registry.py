"""The explicit registry of model names and ``create_model``, the one public constructor."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from . import specs
from .detection.model import build_detector, load_backbone_weights
from .detection.specs import DETECTORS as DETECTOR_SPECS
from .detection.specs import DetectorSpec, check_box_scales
from .layers import ACTIVATIONS
from .model import MIN_INPUT_SIZE, FeatureExtractor, MobileNet
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


DETECTORS: dict[str, DetectorSpec] = DETECTOR_SPECS  # SSD / SSDLite on the backbones above (detection/)


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to build a model again (stored in checkpoints)."""

    name: str
    width_mult: float = 1.0
    num_classes: int = 1000
    in_chans: int = 3
    dropout: float | None = None
    act: str | None = None
    reduced_tail: bool = False  # detectors on V3: C4-C5 halved (V3 Sec. 6.3)
    input_size: int | None = None  # detectors: the side images are resized to
    box_scales: tuple[float, float] | None = None  # detectors: smallest and largest default box; None: the spec's
    bn_eps: float | None = None  # classifiers: batch norm's epsilon; None: the spec's (V3: 1e-3, timm's V3: 1e-5)

    def to_dict(self) -> dict:
        return asdict(self)


def list_models() -> list[str]:
    """Names accepted by ``create_model``: classifiers, then detectors."""
    return [*MODELS, *DETECTORS]


def is_detector(name: str) -> bool:
    return name in DETECTORS


def get_spec(name: str) -> ModelSpec | DetectorSpec:
    if not isinstance(name, str) or name not in MODELS and name not in DETECTORS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return MODELS.get(name) or DETECTORS[name]


def create_model(
    name: str,
    *,
    width_mult: float = 1.0,
    num_classes: int | None = None,
    in_chans: int = 3,
    dropout: float | None = None,
    act: str | None = None,
    weights: str | os.PathLike | None = None,
    weights_backbone: str | os.PathLike | None = None,
    features_only: bool = False,
    reduced_tail: bool = False,
    input_size: int | None = None,
    box_scales: Sequence[float] | None = None,
    bn_eps: float | None = None,
) -> nn.Module:
    """Build a MobileNet classifier or detector by name.

    Args:
        name: one of ``list_models()``.
        width_mult: the width multiplier alpha (V1 Sec. 3.3); any number > 0. Channels are
            rounded with ``layers.make_divisible``.
        num_classes: classifier outputs (default 1000), or detector classes with the
            background included (default 91, COCO's as torchvision numbers them).
        in_chans: input channels (1 for grey images; detectors take RGB).
        dropout: dropout before the classifier; ``None`` keeps the model's default
            (V1: 0, V2 and V3: 0.2).
        act: activation of the V1 and V2 layers, ``"relu6"`` (default) or ``"relu"``.
        weights: path to a state dict saved by this package, torchvision or timm. Everything
            is loaded but a classifier for another ``num_classes`` (re-initialised) and a stem
            for another ``in_chans`` (RGB filters summed for grey input); one warning says so.
        weights_backbone: detectors: a classifier's weights file (this package's, torchvision's
            or timm's) to start the backbone from, as torchvision's ``weights_backbone``; the
            extra layers and heads start fresh. Classifiers have the full tail, so not with
            ``reduced_tail``.
        features_only: return a backbone whose forward gives the maps at strides 4, 8, 16, 32.
        reduced_tail: detectors on V3: the last stage with half the channels (V3 Sec. 6.3).
        input_size: detectors: the side images are resized to (default 320 for SSDLite, 300
            for SSD).
        box_scales: detectors: the smallest and largest default box as fractions of the input
            side (SSD Sec. 2.2's s_min and s_max; default the spec's, 0.2 and 0.95).
        bn_eps: classifiers: batch norm's epsilon (default the spec's: 1e-3 for V3, as its
            reference code and torchvision). timm's weights bring timm's, 1e-5.

    A classifier's input resolution is not an argument: any input of at least 32x32 works, and
    the resolution multiplier rho is the input size / 224 (V1 Sec. 3.4).
    """
    spec = get_spec(name)
    detector = isinstance(spec, DetectorSpec)
    if num_classes is None:
        num_classes = 91 if detector else 1000
    if box_scales is not None:
        box_scales = check_box_scales(box_scales)
    args = ModelArgs(name, _check_width(width_mult), num_classes, in_chans, dropout, act, reduced_tail, input_size,
                     box_scales, bn_eps)
    _check_args(args, spec)
    if features_only and detector:
        raise ValueError(f"features_only gives a classifier's backbone; {name} is a detector (its backbone: "
                         f"create_model({spec.backbone!r}, features_only=True))")
    if detector:
        model = build_detector(spec, MODELS[spec.backbone], width_mult=args.width_mult, num_classes=num_classes,
                               reduced=reduced_tail, input_size=input_size, box_scales=box_scales)
    else:
        model = MobileNet(
            spec if bn_eps is None else dataclasses.replace(spec, bn_eps=bn_eps),
            width_mult=args.width_mult, num_classes=num_classes, in_chans=in_chans, dropout=dropout, act=act,
        )
    model.args = args
    if weights_backbone is not None:
        if not detector or weights is not None:
            raise ValueError("weights_backbone starts a detector's backbone from a classifier's weights; "
                             + ("a classifier takes weights=" if not detector else "give weights or weights_backbone"))
        warnings.warn(f"{weights_backbone}: " + "; ".join(load_backbone_weights(model, weights_backbone)),
                      stacklevel=2)
    if weights is not None:
        try:
            notes = load_pretrained(model, weights)
        except ValueError as e:
            if detector and spec.backbone.startswith("mobilenet_v3") and not reduced_tail and _fits_reduced_tail(
                    name, weights, width_mult, num_classes):
                e.args = (f"{e}; the file fits reduced_tail=True (torchvision's ssdlite320_mobilenet_v3_large is "
                          "built that way)",)
            raise
        if notes:  # one warning, whatever had to be adapted
            warnings.warn(f"{weights}: " + "; ".join(notes), stacklevel=2)
    return FeatureExtractor(model) if features_only else model


def _fits_reduced_tail(name: str, weights: str | os.PathLike, width_mult: float, num_classes: int) -> bool:
    """Whether a V3 detector's weights that did not load fit the same detector with the reduced tail."""
    try:
        create_model(name, width_mult=width_mult, num_classes=num_classes, reduced_tail=True, weights=weights)
    except ValueError:
        return False
    return True


def _check_width(width_mult: object) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, numbers.Real):
        raise ValueError(f"width_mult must be a number > 0, got {width_mult!r}")
    if not math.isfinite(width_mult) or width_mult <= 0:
        raise ValueError(f"width_mult must be a finite number > 0, got {width_mult!r}")
    return float(width_mult)


def _is_count(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_args(args: ModelArgs, spec: ModelSpec | DetectorSpec) -> None:
    if isinstance(spec, DetectorSpec):
        if args.in_chans != 3 or args.dropout is not None or args.act is not None or args.bn_eps is not None:
            raise ValueError(f"{args.name} is a detector: it takes RGB images (in_chans 3) and has no dropout, act "
                             "or bn_eps")
        if args.reduced_tail and not spec.backbone.startswith("mobilenet_v3"):
            raise ValueError(f"reduced_tail is for the V3 detectors (V3 Sec. 6.3), not {args.name}")
        if args.input_size is not None and (not _is_count(args.input_size) or args.input_size < MIN_INPUT_SIZE):
            raise ValueError(f"input_size must be an integer >= {MIN_INPUT_SIZE}, got {args.input_size!r}")
        if not _is_count(args.num_classes) or args.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for a detector (background included), got {args.num_classes!r}")
        return
    if args.reduced_tail or args.input_size is not None or args.box_scales is not None:
        raise ValueError(f"reduced_tail, input_size and box_scales are detector arguments; {args.name} is a classifier")
    if not _is_count(args.num_classes):
        raise ValueError(f"num_classes must be an integer >= 1, got {args.num_classes!r}")
    if not _is_count(args.in_chans):
        raise ValueError(f"in_chans must be an integer >= 1, got {args.in_chans!r}")
    if args.dropout is not None and not (isinstance(args.dropout, numbers.Real) and 0 <= args.dropout < 1):
        raise ValueError(f"dropout must be in [0, 1), got {args.dropout!r}")
    if args.bn_eps is not None and not (isinstance(args.bn_eps, numbers.Real) and 0 < args.bn_eps < 1):
        raise ValueError(f"bn_eps must be in (0, 1), got {args.bn_eps!r}")
    if args.act is not None:
        if args.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {args.act!r}; known: {', '.join(ACTIVATIONS)}")
        if not any(isinstance(r, (Separable, Bottleneck)) for r in spec.rows):
            raise ValueError(f"{args.name} sets its activation per layer ({spec.paper}); act cannot be changed")
