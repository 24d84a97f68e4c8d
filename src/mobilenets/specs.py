"""The MobileNets as data: the papers' architecture tables as frozen dataclasses.

Each row type reads like one line of a paper's table; ``model.build`` turns a ``ModelSpec`` into
layers. Channel counts here are at width multiplier 1.0; the builder thins them.

References:
    V1: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
        Applications", 2017 (arXiv:1704.04861), Tables 1, 4 and 5.
    V2: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", 2018
        (arXiv:1801.04381), Table 2.
    V3: Howard et al., "Searching for MobileNetV3", 2019 (arXiv:1905.02244), Tables 1 and 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Conv:
    """A full convolution + BN + activation: V1 "Conv / s2 3x3x3x32", V2/V3 "conv2d" rows.

    ``act=None`` uses the model's activation. ``thin=False`` keeps the width for multipliers
    below 1 (V2 Sec. 6.1: the last conv layer is not thinned).
    """

    c: int
    s: int = 1
    k: int = 3
    act: str | None = None
    thin: bool = True


@dataclass(frozen=True)
class Separable:
    """V1 depthwise separable pair: "Conv dw / s" (3x3 depthwise) then "Conv / s1" (1x1 to c)."""

    c: int
    s: int = 1


@dataclass(frozen=True)
class Bottleneck:
    """V2 Table 2 row: expansion factor t, output channels c, repeated n times, first stride s."""

    t: int
    c: int
    n: int
    s: int


@dataclass(frozen=True)
class Bneck:
    """V3 Tables 1/2 row: kernel k, expansion size exp, output channels c, SE, nonlinearity, stride."""

    k: int
    exp: int
    c: int
    se: bool
    nl: str
    s: int


Row = Conv | Separable | Bottleneck | Bneck


@dataclass(frozen=True)
class Head:
    """After the last row: global average pool, an optional hidden FC (V3), dropout, classifier."""

    hidden: int = 0
    hidden_act: str = "hswish"


@dataclass(frozen=True)
class ModelSpec:
    """One network: stem row, body rows (including V2/V3's final 1x1 conv), head."""

    paper: str
    stem: Conv
    rows: tuple[Row, ...]
    head: Head = Head()
    act: str = "relu6"
    dropout: float = 0.0
    bn_eps: float = 1e-5

    def with_rows(self, rows: tuple[Row, ...], paper: str) -> ModelSpec:
        return dataclasses.replace(self, rows=rows, paper=paper)


MOBILENET_V1 = ModelSpec(
    paper="MobileNet V1, Table 1",
    stem=Conv(32, s=2),
    rows=(
        Separable(64, 1),
        Separable(128, 2),
        Separable(128, 1),
        Separable(256, 2),
        Separable(256, 1),
        Separable(512, 2),
        *[Separable(512, 1)] * 5,
        Separable(1024, 2),
        # Table 1 prints "Conv dw / s2" here, on a 7x7 input; the authors' code uses stride 1,
        # so the map stays 7x7 for the 7x7 average pool (a known erratum).
        Separable(1024, 1),
    ),
    # The text says ReLU; the authors' TF-Slim code (and Keras, timm) use ReLU6, which also
    # quantizes better. act="relu" gives the text's version.
    act="relu6",
)

# Table 4 baseline: every depthwise separable pair replaced by one full 3x3 convolution.
MOBILENET_V1_CONV = MOBILENET_V1.with_rows(
    tuple(Conv(r.c, r.s) if isinstance(r, Separable) else r for r in MOBILENET_V1.rows),
    paper="MobileNet V1, Table 4 (conv MobileNet)",
)

# Table 5 baseline: the five separable layers at 14x14x512 removed.
MOBILENET_V1_SHALLOW = MOBILENET_V1.with_rows(
    MOBILENET_V1.rows[:6] + MOBILENET_V1.rows[11:],
    paper="MobileNet V1, Table 5 (shallow MobileNet)",
)

MOBILENET_V2 = ModelSpec(
    paper="MobileNet V2, Table 2",
    stem=Conv(32, s=2),
    rows=(
        Bottleneck(t=1, c=16, n=1, s=1),
        Bottleneck(t=6, c=24, n=2, s=2),
        Bottleneck(t=6, c=32, n=3, s=2),
        Bottleneck(t=6, c=64, n=4, s=2),
        Bottleneck(t=6, c=96, n=3, s=1),
        Bottleneck(t=6, c=160, n=3, s=2),
        Bottleneck(t=6, c=320, n=1, s=1),
        Conv(1280, k=1, thin=False),
    ),
    act="relu6",
    dropout=0.2,
)

MOBILENET_V3_LARGE = ModelSpec(
    paper="MobileNet V3, Table 1 (Large)",
    stem=Conv(16, s=2, act="hswish"),
    rows=(
        Bneck(3, 16, 16, False, "relu", 1),
        Bneck(3, 64, 24, False, "relu", 2),
        Bneck(3, 72, 24, False, "relu", 1),
        Bneck(5, 72, 40, True, "relu", 2),
        Bneck(5, 120, 40, True, "relu", 1),
        Bneck(5, 120, 40, True, "relu", 1),
        Bneck(3, 240, 80, False, "hswish", 2),
        Bneck(3, 200, 80, False, "hswish", 1),
        Bneck(3, 184, 80, False, "hswish", 1),
        Bneck(3, 184, 80, False, "hswish", 1),
        Bneck(3, 480, 112, True, "hswish", 1),
        Bneck(3, 672, 112, True, "hswish", 1),
        Bneck(5, 672, 160, True, "hswish", 2),
        Bneck(5, 960, 160, True, "hswish", 1),
        Bneck(5, 960, 160, True, "hswish", 1),
        Conv(960, k=1, act="hswish"),
    ),
    head=Head(hidden=1280),
    act="hswish",
    dropout=0.2,
    bn_eps=1e-3,  # V3 reference code uses eps 0.001
)

MOBILENET_V3_SMALL = ModelSpec(
    paper="MobileNet V3, Table 2 (Small)",
    stem=Conv(16, s=2, act="hswish"),
    rows=(
        Bneck(3, 16, 16, True, "relu", 2),
        Bneck(3, 72, 24, False, "relu", 2),
        Bneck(3, 88, 24, False, "relu", 1),
        Bneck(5, 96, 40, True, "hswish", 2),
        Bneck(5, 240, 40, True, "hswish", 1),
        Bneck(5, 240, 40, True, "hswish", 1),
        Bneck(5, 120, 48, True, "hswish", 1),
        Bneck(5, 144, 48, True, "hswish", 1),
        Bneck(5, 288, 96, True, "hswish", 2),
        Bneck(5, 576, 96, True, "hswish", 1),
        Bneck(5, 576, 96, True, "hswish", 1),
        Conv(576, k=1, act="hswish"),
    ),
    head=Head(hidden=1024),
    act="hswish",
    dropout=0.2,
    bn_eps=1e-3,
)


def reduced_tail(spec: ModelSpec) -> ModelSpec:
    """The V3 detection backbone: the last stage (C5) with half the channels (V3 Sec. 6.3,
    "Reduce the channel counts of C4-C5 layers"; torchvision's ``reduced_tail``).

    From the last stride-2 bneck on, output channels are halved, and so are the expansions
    after it and the final 1x1 convolution; that bneck keeps its expansion, which is where
    SSDLite taps the stride-16 features.
    """
    last_s2 = max(i for i, r in enumerate(spec.rows) if isinstance(r, Bneck) and r.s == 2)
    rows = [
        dataclasses.replace(r, c=r.c // 2, exp=r.exp // 2 if i > last_s2 else r.exp) if isinstance(r, Bneck)
        else dataclasses.replace(r, c=r.c // 2)
        for i, r in enumerate(spec.rows[last_s2:], start=last_s2)
    ]
    return spec.with_rows(spec.rows[:last_s2] + tuple(rows), paper=f"{spec.paper}, reduced tail (V3 Sec. 6.3)")
