"""The detectors as data: where features are tapped, the extra layers, the heads, the default boxes.

References:
    SSD: Liu et al., "SSD: Single Shot MultiBox Detector", 2016 (arXiv:1512.02325).
    V1 paper Sec. 4.7 and Table 13: SSD300 on MobileNet (the TF Object Detection API's
        ``ssd_mobilenet_v1_feature_extractor.py`` and ``ssd_mobilenet_v1_coco.config``).
    V2 paper Sec. 6.2, Tables 5 and 6: SSDLite, every regular convolution of the extra layers
        and the prediction heads replaced by a depthwise separable one.
    V3 paper Sec. 6.3, Table 6: SSDLite on V3, C4-C5 with half the channels ("reduced tail").
    torchvision ``models/detection/ssdlite.py``: the layout this package follows exactly, so
        that its ``ssdlite320_mobilenet_v3_large`` weights load and give the same detections.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tap:
    """A feature map taken from the backbone at ``stride``: the output of the last layer at that
    stride (``at="end"``), or the expansion 1x1 output of the first block that goes on to the
    next stride (``at="expansion"``: the map before its stride-2 depthwise convolution)."""

    stride: int
    at: str = "end"


@dataclass(frozen=True)
class Extra:
    """An extra feature layer after the backbone: 1x1 to c/2, then a stride-2 3x3 (depthwise
    and 1x1 to c for SSDLite, a full convolution to c for SSD); BN + ReLU6 after each."""

    c: int


@dataclass(frozen=True)
class DefaultBoxes:
    """SSD's default boxes (Liu et al. Sec. 2.2) as torchvision's ``DefaultBoxGenerator``:
    scales spaced evenly from ``min_scale`` to ``max_scale`` over the maps, and per location a
    square at the map's scale, one at the geometric mean with the next scale, and a pair
    (w/h = r and 1/r) per aspect ratio r. ``first_map_three`` is the TF Object Detection API's
    ``reduce_boxes_in_lowest_layer``: the first map gets 3 boxes (scale 0.1 square and ratio
    2 and 1/2 at the min scale)."""

    aspect_ratios: tuple[tuple[int, ...], ...] = ((2, 3),) * 6
    min_scale: float = 0.2
    max_scale: float = 0.95
    first_map_three: bool = False


def check_box_scales(scales: object) -> tuple[float, float]:
    """``scales`` as (smallest, largest) default-box scale, or a ValueError naming the problem."""
    try:
        low, high = (float(v) for v in scales)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"box-scales must be two numbers (smallest and largest scale), got {scales!r}") from None
    if not 0 < low < high <= 1:
        raise ValueError(f"box-scales must satisfy 0 < smallest < largest <= 1, got {low:g} and {high:g}")
    return low, high


@dataclass(frozen=True)
class DetectorSpec:
    """One detector: a backbone from the classifier registry, its taps, extras, head and boxes."""

    paper: str
    backbone: str
    taps: tuple[Tap, ...]
    extras: tuple[Extra, ...]
    head: str  # "ssdlite" (depthwise separable prediction) | "ssd" (full convolutions)
    boxes: DefaultBoxes
    input_size: int
    min_depth: int = 16  # extras never thinner than this at small widths (torchvision)
    head_kernel: int = 3  # of SSD's prediction convolutions (the TF config of V1 Table 13 used 1)
    # torchvision's SSDLite: BN eps 1e-3 and momentum 0.03, inputs scaled to [-1, 1]
    bn_eps: float = 1e-3
    bn_momentum: float = 0.03
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    # post-processing (torchvision's SSDLite defaults)
    score_thresh: float = 0.001
    nms_thresh: float = 0.55
    detections_per_img: int = 300
    topk_candidates: int = 300


SSDLITE_TAPS = (Tap(32, at="expansion"), Tap(32))  # V2 Sec. 6.2: layer 15's expansion and the last layer
SSDLITE_EXTRAS = (Extra(512), Extra(256), Extra(256), Extra(128))  # maps 20, 10 -> 5, 3, 2, 1 at 320

DETECTORS: dict[str, DetectorSpec] = {
    "ssdlite_mobilenet_v2": DetectorSpec(
        paper="MobileNet V2 Sec. 6.2, Table 6 (SSDLite)", backbone="mobilenet_v2", taps=SSDLITE_TAPS,
        extras=SSDLITE_EXTRAS, head="ssdlite", boxes=DefaultBoxes(), input_size=320,
    ),
    "ssdlite_mobilenet_v3_large": DetectorSpec(
        paper="MobileNet V3 Sec. 6.3, Table 6 (SSDLite, Large)", backbone="mobilenet_v3_large", taps=SSDLITE_TAPS,
        extras=SSDLITE_EXTRAS, head="ssdlite", boxes=DefaultBoxes(), input_size=320,
    ),
    "ssdlite_mobilenet_v3_small": DetectorSpec(
        paper="MobileNet V3 Sec. 6.3, Table 6 (SSDLite, Small)", backbone="mobilenet_v3_small", taps=SSDLITE_TAPS,
        extras=SSDLITE_EXTRAS, head="ssdlite", boxes=DefaultBoxes(), input_size=320,
    ),
    "ssd_mobilenet_v1": DetectorSpec(
        # Conv2d_11_pointwise (stride 16) and Conv2d_13_pointwise (stride 32), then four extra
        # layers of depth 512, 256, 256, 128; 1,917 boxes at 300 (19x19x3 + (10, 5, 3, 2, 1)^2 x 6)
        paper="MobileNet V1 Sec. 4.7, Table 13 (SSD300)", backbone="mobilenet_v1", taps=(Tap(16), Tap(32)),
        extras=SSDLITE_EXTRAS, head="ssd", boxes=DefaultBoxes(first_map_three=True), input_size=300,
    ),
}
