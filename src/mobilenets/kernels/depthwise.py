"""Depthwise convolution for training on the CPU (``depthwise.cpp``).

oneDNN trains a depthwise layer far below the vector units' rate: on an AMX Xeon, depthwise
layers (forward, backward and the copies around them) took 40 % of the ``fashion-mnist``
recipe's V1 step for about 3 % of its mult-adds (V1 Table 2), and its bf16 backward at stride 2
or with 5x5 filters was several times slower than its float one, so those layers ran in float
with two copies of their map. This op computes the same convolution along the channels of channels-last
maps, in bf16 or float with float sums. Measured in docs/results.md, section 2. Everything else
(evaluation, export, CUDA, ``torch.compile``) keeps PyTorch's op.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .build import load


def kernel():
    return load("depthwise")


def applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``depthwise_conv(conv, x)`` computes ``conv(x)`` here, faster than PyTorch's op: a
    depthwise layer without bias, square kernel of 1 to 7, "same" padding, stride 1 or 2, on a
    channels-last CPU map in bf16, or in float for 5x5 and 7x7 kernels (oneDNN's float 3x3 kernels
    are as fast as this op's, its 5x5 ones 2x to 3x slower; docs/results.md, section 2)."""
    k, s = conv.kernel_size, conv.stride
    return (
        conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
        and k[0] == k[1] and k[0] in (1, 3, 5, 7) and conv.padding == (k[0] // 2,) * 2
        and s[0] == s[1] and s[0] in (1, 2) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
        and conv.weight.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
        and (x.dtype == torch.bfloat16 or (x.dtype == torch.float32 and k[0] >= 5))
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling() and kernel() is not None
    )


def depthwise_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)`` in ``x``'s dtype (float filters and sums), where ``applies(conv, x)``."""
    return _Depthwise.apply(x, conv.weight, conv.stride[0])


class _Depthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride):  # noqa: ANN001 (autograd's signature)
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return kernel().depthwise_forward(x, weight, stride)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx, dweight = kernel().depthwise_backward(grad, x, weight, ctx.stride)
        return dx, dweight, None
