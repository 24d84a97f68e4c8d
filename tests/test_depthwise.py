"""The depthwise convolution training kernel against PyTorch's op and float64."""

import shutil

import pytest
import torch
from model_helpers import training_step_grads
from torch import nn
from torch.nn import functional as F

from mobilenets.kernels import depthwise

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernel")


@pytest.fixture(scope="module")
def kernel():
    built = depthwise.kernel()
    assert built is not None, "the depthwise kernel did not build although a compiler is here"
    return built


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _grads(conv, x0, grad, ours: bool):
    """y, dx, dweight of one conv, by the kernel or by PyTorch (bf16: under autocast, as training runs it)."""
    x = x0.clone().requires_grad_()
    conv.weight.grad = None
    if ours:
        y = depthwise.depthwise_conv(conv, x)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=x0.dtype == torch.bfloat16):
            y = conv(x)
    y.backward(grad.to(y.dtype))
    return y, x.grad, conv.weight.grad


# (batch, channels, side, kernel, stride): channel counts off the 16-channel step, odd and even
# sides, maps smaller than the filter
SHAPES = [(2, 32, 9, 3, 1), (3, 24, 8, 3, 2), (2, 40, 7, 3, 2), (2, 72, 9, 5, 1), (3, 18, 10, 5, 2), (2, 200, 1, 5, 1),
          (2, 24, 2, 3, 1), (2, 16, 3, 7, 1), (2, 8, 11, 7, 2), (2, 33, 6, 1, 2), (1, 512, 5, 3, 1), (2, 64, 20, 3, 1)]


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_float64(kernel, dtype, shape):
    n, c, side, k, s = shape
    conv = nn.Conv2d(c, c, k, s, k // 2, groups=c, bias=False)
    x0 = torch.randn(n, c, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
    out = (side - 1) // s + 1
    grad = torch.randn(n, c, out, out).to(dtype).contiguous(memory_format=torch.channels_last)
    y, dx, dw = _grads(conv, x0, grad, ours=True)
    assert y.shape == (n, c, out, out) and y.dtype == dx.dtype == dtype and dw.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last) and dx.is_contiguous(memory_format=torch.channels_last)
    xr = x0.double().requires_grad_()
    wr = conv.weight.detach().double().requires_grad_()
    yr = F.conv2d(xr, wr, None, s, k // 2, 1, c)
    yr.backward(grad.double())
    if dtype == torch.float32:  # float sums of at most 49 terms a value; the filter's in blocks, then double
        for ours, exact in ((y, yr), (dx, xr.grad), (dw, wr.grad)):
            assert _rel(ours, exact) < 1e-5
    else:  # bf16 maps: the rounding of the output dominates; no further off than PyTorch's bf16 op
        theirs = _grads(conv, x0, grad, ours=False)
        for ours, their, exact in zip((y, dx, dw), theirs, (yr, xr.grad, wr.grad)):
            assert _rel(ours, exact) <= max(8e-3, 1.5 * _rel(their, exact))


@needs_compiler
def test_filter_gradient_keeps_the_parameters_strides(kernel):
    """DDP copies a gradient whose strides differ from its parameter's, with a warning."""
    conv = nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False).to(memory_format=torch.channels_last)
    x = torch.randn(2, 16, 6, 6).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    depthwise.depthwise_conv(conv, x).sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()


@needs_compiler
def test_applies_only_where_it_computes_the_same_and_faster(kernel):
    def conv(c=8, k=3, s=1, **kw):
        return nn.Conv2d(c, kw.pop("out", c), k, s, kw.pop("padding", k // 2), groups=kw.pop("groups", c),
                         bias=kw.pop("bias", False), **kw)

    bf16 = torch.randn(2, 8, 6, 6).bfloat16().contiguous(memory_format=torch.channels_last)
    fp32 = bf16.float().contiguous(memory_format=torch.channels_last)
    assert depthwise.applies(conv(), bf16) and depthwise.applies(conv(k=5, s=2), fp32)
    assert depthwise.applies(conv(k=7), fp32) and depthwise.applies(conv(k=1, s=2), bf16)
    refused = [
        (conv(), fp32),  # float 3x3: oneDNN is as fast
        (conv(), bf16.contiguous()),  # NCHW
        (conv(bias=True), bf16),
        (conv(s=3), bf16),
        (conv(dilation=2, padding=2), bf16),
        (conv(padding=0), bf16),
        (conv(groups=4), bf16),  # grouped, not depthwise
        (conv(out=16), bf16),  # a channel multiplier
        (conv(k=9), bf16),
        (conv(), bf16.double()),
    ]
    for layer, x in refused:
        assert not depthwise.applies(layer, x), layer


@needs_compiler
def test_training_step_no_further_from_float64(kernel, monkeypatch):
    """V3-Small (3x3 and 5x5 depthwise layers, strides 1 and 2) in bf16 and float: its gradients with
    the kernel are no further from float64 than with PyTorch's depthwise op."""
    exact = training_step_grads("mobilenet_v3_small", torch.float64)
    ours = {dtype: training_step_grads("mobilenet_v3_small", dtype) for dtype in (torch.float32, torch.bfloat16)}
    monkeypatch.setattr(depthwise, "kernel", lambda: None)
    for dtype, grads in ours.items():
        theirs = training_step_grads("mobilenet_v3_small", dtype)
        off = [((g - exact).norm() / exact.norm()).item() for g in (grads, theirs)]
        assert off[0] <= max(1e-4 if dtype == torch.float32 else 0.0, 1.25 * off[1])
