"""Batch norm and the activation after it as one op for training on the CPU (``bn_act.cpp``).

PyTorch's training batch norm and activation pass over the map once per op and gradient; the
fused op reads it twice and writes once each way, and sums in blocks (closer to float64 than
PyTorch's float sums on large maps). Measured in docs/results.md, section 2. Everything else (evaluation, export, CUDA,
``torch.compile``, frozen BN) keeps PyTorch's ops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .build import load

_CLAMP, _HARDSWISH = 0, 1  # the kernel's activation kinds
_ACTIVATIONS: dict[type[nn.Module], tuple[int, float, float]] = {  # kind, clamp bounds
    nn.ReLU6: (_CLAMP, 0.0, 6.0),
    nn.ReLU: (_CLAMP, 0.0, math.inf),
    nn.Identity: (_CLAMP, -math.inf, math.inf),
    nn.Hardswish: (_HARDSWISH, 0.0, 0.0),
}


def kernel():
    return load("bn_act")


def batch_norm_act(bn: nn.BatchNorm2d, act: nn.Module, x: Tensor) -> Tensor:
    """``act(bn(x))``, in one fused op where it applies (training BN on a channels-last CPU map)."""
    spec = _ACTIVATIONS.get(type(act))
    if spec is None or not _fusable(bn, x) or kernel() is None:
        return act(bn(x))
    y, mean, var = _BatchNormAct.apply(x, bn.weight, bn.bias, bn.eps, *spec)
    _update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return y


def _fusable(bn: nn.BatchNorm2d, x: Tensor) -> bool:
    return (
        bn.training and bn.affine and bn.track_running_stats and bn.running_mean is not None
        and x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.bfloat16, torch.float32)
        and bn.weight.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        and x.numel() > x.shape[1]  # one value per channel: PyTorch's BN raises its own error
        and not torch.compiler.is_compiling()
    )


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """As ``nn.BatchNorm2d`` does in training: momentum or a cumulative mean, the unbiased variance."""
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn.running_mean.lerp_(mean, factor)
    bn.running_var.lerp_(var * (count / (count - 1)), factor)


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, kind, lo, hi):  # noqa: ANN001 (autograd's signature)
        y, mean, var, invstd = kernel().bn_act_forward(x, weight, bias, eps, kind, lo, hi)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.act = (kind, lo, hi)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):  # noqa: ANN001
        x, weight, bias, mean, invstd = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx, dweight, dbias = kernel().bn_act_backward(grad, x, weight, bias, mean, invstd, *ctx.act)
        return dx, dweight, dbias, None, None, None, None
