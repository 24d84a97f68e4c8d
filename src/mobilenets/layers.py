"""Building layers shared by every MobileNet: channel rounding, activations, conv-BN-act, SE."""

from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "hsigmoid": nn.Hardsigmoid,
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never dropping below 90 %.

    This is the one channel-rounding rule of the family (TF-Slim's ``_make_divisible``, also used
    by torchvision and timm). For V1 the paper's widths 1, .75, .5, .25 give exactly the channel
    counts of the paper, because 32 * alpha is already a multiple of 8.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:  # rounding down must not remove more than 10 %
        rounded += divisor
    return rounded


def activation(name: str | None) -> nn.Module:
    """The activation module for a spec name; ``None`` means linear (identity)."""
    if name is None:
        return nn.Identity()
    try:
        return ACTIVATIONS[name](inplace=True)
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


class ConvBNAct(nn.Module):
    """Convolution (no bias) followed by batch norm and an optional activation.

    Every convolution of the MobileNets is followed by BN (V1 paper Sec. 3.2, Fig. 3);
    ``act=None`` gives the linear bottleneck projection of V2 (V2 paper Sec. 3.2).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu6",
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.act = activation(act)
        self.depthwise = groups > 1 and groups == in_ch

    def forward(self, x: Tensor) -> Tensor:
        if self.depthwise and x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
            # Training under CPU bf16 autocast: keep depthwise convolutions in float32. They hold
            # ~3 % of the mult-adds (V1 Table 2), so bf16 saves little, and oneDNN's bf16 backward
            # of a strided depthwise convolution is several times slower than the float32 one.
            with torch.autocast("cpu", enabled=False):
                return self.act(self.bn(self.conv(x.float())))
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite with a hard-sigmoid gate (V3 paper Sec. 5.3).

    The two "fully connected" layers are 1x1 convolutions with bias, as in the reference code.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
