"""The fused training batch norm + activation kernel against PyTorch's ops."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from model_helpers import training_step_grads
from torch import nn
from torch.nn import functional as F

from mobilenets.kernels import bn_act, build, build_all, depthwise

ACTIVATIONS = [nn.ReLU6(), nn.ReLU(inplace=True), nn.Identity(), nn.Hardswish()]
needs_compiler = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler to build the kernel")


@pytest.fixture(scope="module")
def kernel():
    built = bn_act.kernel()
    assert built is not None, "the bn_act kernel did not build although a compiler is here"
    return built


def _reference(act, x, weight, bias):
    """act(BN(x)) in float64, contiguous: the value both implementations approximate."""
    x = x.detach().double().contiguous().requires_grad_()
    w, b = weight.detach().double().requires_grad_(), bias.detach().double().requires_grad_()
    return x, w, b, act(F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5))


def _run(fused: bool, act, x0, bn0, grad):
    bn = _copy(bn0)
    x = x0.clone().requires_grad_()
    y = bn_act.batch_norm_act(bn, act, x) if fused else act(bn(x))
    y.backward(grad)
    return y, x.grad, bn


def _copy(bn):
    out = nn.BatchNorm2d(bn.num_features, momentum=bn.momentum)
    out.load_state_dict(bn.state_dict())
    return out


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@needs_compiler
@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 24, 7, 7), (2, 64, 3, 3), (8, 8, 10, 10)])
def test_matches_pytorch(kernel, act, dtype, shape):
    c = shape[1]
    x0 = (torch.randn(shape) * 3 + 2).to(dtype).contiguous(memory_format=torch.channels_last)
    bn0 = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn0.weight.uniform_(0.5, 1.5), bn0.bias.normal_(), bn0.running_mean.normal_(), bn0.running_var.uniform_(1, 2)
    grad = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    y, dx, bn = _run(True, act, x0, bn0, grad)
    y_ref, dx_ref, bn_ref = _run(False, act, x0, bn0, grad)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert dx.dtype == dtype
    # Against float64: no less exact than PyTorch's own ops (bf16 rounding dominates both).
    xr, wr, br, yr = _reference(act, x0, bn0.weight, bn0.bias)
    yr.backward(grad.double())
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    for ours, theirs, exact in ((y, y_ref, yr), (dx, dx_ref, xr.grad), (bn.weight.grad, bn_ref.weight.grad, wr.grad),
                                (bn.bias.grad, bn_ref.bias.grad, br.grad)):
        assert _rel(ours, exact) <= max(tol, 1.5 * _rel(theirs, exact))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(bn, name), getattr(bn_ref, name), rtol=1e-5, atol=1e-6)


@needs_compiler
def test_cumulative_running_stats(kernel):
    """momentum=None (precise BN's setting): a cumulative mean, as nn.BatchNorm2d keeps it."""
    bn0 = nn.BatchNorm2d(16, momentum=None)
    fused, native = _copy(bn0), _copy(bn0)
    for _ in range(3):
        x = torch.randn(4, 16, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
        bn_act.batch_norm_act(fused, nn.ReLU6(), x)
        nn.ReLU6()(native(x))
    torch.testing.assert_close(fused.state_dict(), native.state_dict())


@needs_compiler
def test_fallbacks_leave_pytorch_in_charge(kernel, monkeypatch):
    """Contiguous (NCHW) maps, eval mode, frozen BN, other activations and float64 never reach the kernel."""

    class Refuse:
        def __getattr__(self, name):
            raise AssertionError(f"kernel called: {name}")

    monkeypatch.setattr(bn_act, "kernel", lambda: Refuse())
    bn = nn.BatchNorm2d(8)
    cl = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    bn_act.batch_norm_act(bn, nn.ReLU6(), torch.randn(2, 8, 6, 6))  # NCHW
    bn_act.batch_norm_act(bn, nn.Hardsigmoid(), cl)
    bn_act.batch_norm_act(bn.double(), nn.ReLU6(), cl.double())
    bn.float().eval()
    bn_act.batch_norm_act(bn, nn.ReLU6(), cl)
    bn.train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):  # PyTorch's own error
        bn_act.batch_norm_act(bn, nn.ReLU6(), torch.randn(1, 8, 1, 1))


@needs_compiler
@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v3_small"])
def test_training_step_matches_float64(kernel, monkeypatch, name):
    """A whole model's gradients against the same step in float64 (which the kernel leaves to PyTorch).

    fp32: within 1e-4 (PyTorch's own fp32 ops are 1.4e-2 off on V1, from their float sums). bf16 on
    V3-Small: no further off than PyTorch's ops. (A bf16 step of V1 at random init differs from
    float64 by its whole size in either implementation: rounding amplified through 27 batch norms.)
    """
    exact = training_step_grads(name, torch.float64)
    assert _rel(training_step_grads(name, torch.float32), exact) < 1e-4
    if name == "mobilenet_v3_small":
        fused = _rel(training_step_grads(name, torch.bfloat16), exact)
        monkeypatch.setattr(bn_act, "kernel", lambda: None)
        assert fused <= 1.25 * _rel(training_step_grads(name, torch.bfloat16), exact)


def test_switch_turns_kernels_off(monkeypatch):
    monkeypatch.setenv(build.SWITCH, "0")
    assert build.load.__wrapped__("bn_act") is None


def test_failed_build_warns_and_falls_back(monkeypatch, tmp_path, capsys):
    def fail(*args):
        raise RuntimeError("Error building extension 'x': c++: not found")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(build, "_build", fail)
    assert build.load.__wrapped__("bn_act") is None
    err = capsys.readouterr().err
    assert "building the bn_act kernel" in err
    assert "warning: the bn_act kernel is not available (Error building extension 'x': c++: not found)" in err
    assert not list((tmp_path / "mobilenets" / "kernels").glob("*.so"))


def test_builds_unused_for_a_month_are_removed(tmp_path):
    def library(name: str, days_unused: float) -> Path:
        path = tmp_path / f"{name}.so"
        path.write_bytes(b"")
        path.with_suffix(".lock").write_bytes(b"")
        os.utime(path, (time.time() - days_unused * 86400,) * 2)
        return path

    current = library("mobilenets_bn_act_current", 90)  # in use now, however old its file
    old, recent = library("mobilenets_bn_act_old", 31), library("mobilenets_bn_act_recent", 29)
    # other kernels, one whose name begins with this one's, keep their builds
    others = library("mobilenets_other_old", 90), library("mobilenets_bn_act_v2_old", 90)
    build._prune(current)
    assert sorted(p.name for p in tmp_path.glob("*.so")) == sorted(p.name for p in (current, recent, *others))
    assert not old.with_suffix(".lock").exists() and current.stat().st_mtime > time.time() - 60


def test_build_all_builds_the_kernels_at_once(monkeypatch):
    both = threading.Barrier(2, timeout=10)  # passed only when the two builds are under way together
    built = []
    for module in (bn_act, depthwise):
        monkeypatch.setattr(module, "kernel", lambda name=module.__name__: (both.wait(), built.append(name)))
    build_all()
    assert sorted(built) == ["mobilenets.kernels.bn_act", "mobilenets.kernels.depthwise"]
