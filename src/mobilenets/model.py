"""The one builder: a ``ModelSpec`` plus width multiplier and head options -> ``MobileNet``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import DepthwiseSeparable, InvertedResidual
from .layers import ConvBNAct, activation, make_divisible
from .specs import Bneck, Bottleneck, Conv, ModelSpec, Row, Separable

MIN_INPUT_SIZE = 32  # one pixel left after the five stride-2 layers
FEATURE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """Where a feature map is taken: after ``blocks[index]``, at ``stride``, with ``channels``."""

    index: int
    stride: int
    channels: int


class MobileNet(nn.Module):
    """stem -> blocks -> global average pool -> [hidden FC] -> dropout -> classifier.

    ``blocks`` is flat (one entry per table layer) so weights map one to one onto the
    reference implementations, which list their layers in the same order.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        dropout: float | None = None,
        act: str | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.width_mult = width_mult
        default_act = act or spec.act
        self.stem = self._conv(spec.stem, in_chans, default_act, spec.bn_eps)
        channels, stride = self.stem.conv.out_channels, spec.stem.s
        blocks: list[nn.Module] = []
        taps: dict[int, FeatureInfo] = {}  # stride -> the last block at that stride
        for row in spec.rows:
            for block, out_ch, block_stride in self._expand(row, channels, default_act, spec.bn_eps):
                channels, stride = out_ch, stride * block_stride
                taps[stride] = FeatureInfo(len(blocks), stride, channels)
                blocks.append(block)
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = [taps[s] for s in FEATURE_STRIDES]
        self.num_features = channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        if spec.head.hidden:
            hidden = make_divisible(spec.head.hidden * width_mult)
            self.hidden = nn.Sequential(nn.Linear(channels, hidden), activation(spec.head.hidden_act))
            channels = hidden
        else:
            self.hidden = nn.Identity()
        self.dropout = nn.Dropout(spec.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _width(self, channels: int, thin: bool = True) -> int:
        mult = self.width_mult if thin else max(1.0, self.width_mult)
        return make_divisible(channels * mult)

    def _conv(self, row: Conv, in_ch: int, act: str, bn_eps: float) -> ConvBNAct:
        return ConvBNAct(in_ch, self._width(row.c, row.thin), row.k, row.s, act=row.act or act, bn_eps=bn_eps)

    def _expand(self, row: Row, in_ch: int, act: str, bn_eps: float) -> Iterator[tuple[nn.Module, int, int]]:
        """Yield (block, output channels, stride) for each layer a table row stands for."""
        if isinstance(row, Conv):
            conv = self._conv(row, in_ch, act, bn_eps)
            yield conv, conv.conv.out_channels, row.s
        elif isinstance(row, Separable):
            out = self._width(row.c)
            yield DepthwiseSeparable(in_ch, out, row.s, act, bn_eps), out, row.s
        elif isinstance(row, Bottleneck):
            out = self._width(row.c)
            for i in range(row.n):
                stride = row.s if i == 0 else 1
                # V2 expands the (already thinned) input by t, rounded to an integer
                yield InvertedResidual(in_ch, round(in_ch * row.t), out, 3, stride, act, 0, bn_eps), out, stride
                in_ch = out
        elif isinstance(row, Bneck):
            out, hidden = self._width(row.c), self._width(row.exp)
            se = make_divisible(hidden // 4) if row.se else 0  # V3 Sec. 5.3: SE at 1/4 of the expansion
            yield InvertedResidual(in_ch, hidden, out, row.k, row.s, row.nl, se, bn_eps), out, row.s
        else:
            raise TypeError(f"unknown row type {type(row).__name__}")

    def _init_weights(self) -> None:
        # torchvision's initialisation for the MobileNets
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.hidden(torch.flatten(self.pool(x), 1))
        return x if pre_logits else self.classifier(self.dropout(x))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.in_chans)
        return self.forward_head(self.forward_features(x))


class FeatureExtractor(nn.Module):
    """A MobileNet body that returns the feature maps at strides 4, 8, 16 and 32 as a list.

    The stride-32 map is the last one before global pooling (V2: 1280, V3: 960 / 576 channels),
    the layer detection and segmentation heads attach to.
    """

    def __init__(self, model: MobileNet) -> None:
        super().__init__()
        self.in_chans = model.in_chans
        self.feature_info = model.feature_info
        last = self.feature_info[-1].index
        self.stem = model.stem
        self.blocks = model.blocks[: last + 1]
        self._taps = {f.index for f in self.feature_info}

    def forward(self, x: Tensor) -> list[Tensor]:
        check_input(x, self.in_chans)
        x = self.stem(x)
        features = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._taps:
                features.append(x)
        return features


def check_input(x: Tensor, in_chans: int) -> None:
    """Reject inputs the network cannot take, with a message that says why."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected input of shape (N, {in_chans}, H, W), got {tuple(x.shape)}")
    if min(x.shape[-2:]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"input {x.shape[-2]}x{x.shape[-1]} is too small: MobileNets need at least "
            f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (five stride-2 layers)"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point input (images scaled and normalised, e.g. by "
                         f"Preprocess.batch_transform()), got {x.dtype}")
