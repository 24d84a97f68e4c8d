"""Building layers shared by every MobileNet: channel rounding, activations, conv-BN-act, SE."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .kernels import depthwise
from .kernels.bn_act import batch_norm_act

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
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    # In place only for ReLU: autograd differentiates ReLU6 / h-swish / h-sigmoid through their
    # input, so their in-place forms make it keep a copy of it (an extra pass over the map).
    return ACTIVATIONS[name](inplace=name == "relu")


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
        if x.device.type == "cpu" and self.training and torch.is_grad_enabled():  # exports trace the plain path
            return batch_norm_act(self.bn, self.act, self._conv_for_cpu_training(x))
        return self.act(self.bn(self.conv(x)))

    def _conv_for_cpu_training(self, x: Tensor) -> Tensor:
        """The same convolution, computed the way a CPU trains it fastest.

        Measured fwd + bwd (benchmarks/train_throughput.py, docs/results.md). Depthwise layers run
        in the package's kernel where it applies (``kernels/depthwise.py``: bf16 maps, float ones
        with 5x5 filters). Under bf16 autocast (AMX): oneDNN's bf16 1x1 convolution backward is
        1.3x to 7x slower than the equivalent GEMM, most on small maps, so a pointwise layer on
        channels-last input runs as ``linear`` over the channels. Without the kernel, oneDNN's
        bf16 depthwise backward is 15x to 60x slower than fp32 at stride 2, and 3.7x to 4x slower
        for 5x5 kernels at stride 1 (V3's; 10x10 to 40x40 maps, batch 32), so those run in fp32.
        """
        conv = self.conv
        if self.depthwise and depthwise.applies(conv, x):
            return depthwise.depthwise_conv(conv, x)
        if not torch.is_autocast_enabled("cpu"):
            return self._depthwise(x, tiny=conv.kernel_size[0]) if self.depthwise else conv(x)
        if conv.kernel_size == (1, 1) and conv.groups == 1 and x.is_contiguous(memory_format=torch.channels_last):
            y = F.linear(x.permute(0, 2, 3, 1), _as_matrix(conv.weight), conv.bias)
            return y.permute(0, 3, 1, 2)  # NHWC memory seen as NCHW: channels-last, no copy
        if self.depthwise and (conv.stride != (1, 1) or conv.kernel_size[0] > 3):
            with torch.autocast("cpu", enabled=False):  # back to bf16 so that BN reads half the bytes
                return self._depthwise(x.float(), tiny=conv.kernel_size[0]).to(torch.get_autocast_dtype("cpu"))
        return self._depthwise(x, tiny=4) if self.depthwise else conv(x)

    def _depthwise(self, x: Tensor, tiny: int) -> Tensor:
        """The depthwise convolution, its input padded beforehand on maps under ``tiny`` pixels.

        oneDNN's depthwise weight gradient is slow where the padding is most of the map: in fp32
        (AVX2), 3x3 on 2x2 and 1x1 maps and 5x5 on 3x3 and 4x4 maps take 2x to 9x the time of
        the same layer on the explicitly padded map (V1's last 2x2 layer at batch 128: 40 ms
        against 4.6); in bf16, 3x3 on maps below 4x4 take 4x.
        """
        conv = self.conv
        if min(x.shape[-2:]) >= tiny:
            return conv(x)
        p = conv.padding[0]
        return F.conv2d(F.pad(x, (p, p, p, p)), conv.weight, None, conv.stride, 0, 1, conv.groups)


def _as_matrix(kernel: Tensor) -> Tensor:
    """A 1x1 kernel as an (out, in) matrix whose gradient comes back in the kernel's own strides.

    A 1x1 kernel has the same memory in both layouts but other strides (``channels_last`` gives
    its size-1 dims stride ``in``), and DDP copies every gradient whose strides differ from its
    parameter's into its buckets, with a warning; the convolution path returns the kernel's.
    """
    if kernel.stride(-1) == 1:  # contiguous: flatten's gradient is contiguous too
        return kernel.flatten(1)
    return kernel.permute(0, 2, 3, 1).flatten(1)  # its gradient, permuted back, is channels-last


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
        self.gate = nn.Hardsigmoid()  # out of place: see activation()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))
