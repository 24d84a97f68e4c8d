import math

import pytest
import torch

import mobilenets
from mobilenets.layers import make_divisible

# Reference parameter counts at defaults (timm mobilenetv1_100, torchvision mobilenet_v2/v3).
PARAMS = {
    "mobilenet_v1": 4_231_976,
    "mobilenet_v1_conv": 29_294_088,
    "mobilenet_v1_shallow": 2_887_976,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
}

STRIDE_32_CHANNELS = {
    "mobilenet_v1": 1024,
    "mobilenet_v1_conv": 1024,
    "mobilenet_v1_shallow": 1024,
    "mobilenet_v2": 1280,
    "mobilenet_v3_large": 960,
    "mobilenet_v3_small": 576,
}


def test_registry_lists_every_model():
    assert mobilenets.list_models() == [*PARAMS, "ssdlite_mobilenet_v2", "ssdlite_mobilenet_v3_large",
                                        "ssdlite_mobilenet_v3_small", "ssd_mobilenet_v1"]


@pytest.mark.parametrize("name", list(PARAMS))
def test_parameter_count(name):
    model = mobilenets.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("name", list(PARAMS))
@pytest.mark.parametrize("size", [32, 45, 64])
def test_forward_shapes(name, size):
    model = mobilenets.create_model(name, num_classes=7, in_chans=1, width_mult=0.5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(PARAMS))
def test_features_only_strides(name):
    model = mobilenets.create_model(name, features_only=True).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(128 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert [f.shape[1] for f in feats] == [info.channels for info in model.feature_info]
    assert feats[-1].shape[1] == STRIDE_32_CHANNELS[name]
    assert not hasattr(model, "classifier")


@pytest.mark.parametrize(
    "alpha, channels",
    [
        (1.0, [32, 64, 128, 256, 512, 1024]),
        (0.75, [24, 48, 96, 192, 384, 768]),
        (0.5, [16, 32, 64, 128, 256, 512]),
        (0.25, [8, 16, 32, 64, 128, 256]),
    ],
)
def test_v1_width_multiplier_gives_paper_channels(alpha, channels):
    model = mobilenets.create_model("mobilenet_v1", width_mult=alpha)
    widths = [model.stem.conv.out_channels] + [b.pw.conv.out_channels for b in model.blocks]
    assert sorted(set(widths)) == channels


@pytest.mark.parametrize("alpha", [0.1, 0.35, 0.6, 1.3, 2.0])
def test_any_positive_width_works(alpha):
    model = mobilenets.create_model("mobilenet_v2", width_mult=alpha, num_classes=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.out_channels != 3:
            assert m.out_channels % 8 == 0
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_make_divisible_never_drops_more_than_ten_percent():
    for value in [3, 8, 11.9, 12, 18, 20, 27.5, 100, 333]:
        out = make_divisible(value)
        assert out % 8 == 0 and out >= 0.9 * value and out >= 8


def test_v1_last_layer_keeps_7x7():
    model = mobilenets.create_model("mobilenet_v1", features_only=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224))[-1].shape == (1, 1024, 7, 7)


def test_v1_activation_choice():
    relu6 = mobilenets.create_model("mobilenet_v1")
    relu = mobilenets.create_model("mobilenet_v1", act="relu")
    assert isinstance(relu6.stem.act, torch.nn.ReLU6)
    assert isinstance(relu.blocks[0].pw.act, torch.nn.ReLU) and not isinstance(relu.blocks[0].pw.act, torch.nn.ReLU6)


def test_v3_uses_hardswish_and_se():
    model = mobilenets.create_model("mobilenet_v3_large")
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Hardswish", "Hardsigmoid", "SqueezeExcite", "ReLU"} <= kinds


def test_model_args_recorded():
    model = mobilenets.create_model("mobilenet_v3_small", width_mult=0.75, num_classes=10, in_chans=1)
    assert model.args == mobilenets.ModelArgs("mobilenet_v3_small", 0.75, 10, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(width_mult=0), "width_mult"),
        (dict(width_mult=-1), "width_mult"),
        (dict(width_mult=math.nan), "width_mult"),
        (dict(width_mult=math.inf), "width_mult"),
        (dict(width_mult="0.5"), "width_mult"),
        (dict(width_mult=True), "width_mult"),
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=2.5), "num_classes"),
        (dict(in_chans=0), "in_chans"),
        (dict(dropout=1.0), "dropout"),
        (dict(act="gelu"), "activation"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mobilenets.create_model("mobilenet_v1", **kwargs)


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v4'.*mobilenet_v1.*mobilenet_v3_small"):
        mobilenets.create_model("mobilenet_v4")


def test_act_cannot_be_changed_for_v3():
    with pytest.raises(ValueError, match="per layer"):
        mobilenets.create_model("mobilenet_v3_large", act="relu")


@pytest.mark.parametrize("shape", [(1, 3, 31, 64), (1, 3, 16, 16)])
def test_too_small_input(shape):
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25).eval()
    with pytest.raises(ValueError, match="too small.*at least 32x32"):
        model(torch.randn(*shape))


def test_uint8_images_are_named():
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25).eval()
    with pytest.raises(ValueError, match="expected a floating-point input .*got torch.uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_wrong_channel_count():
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25, in_chans=1).eval()
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("kernel", ["package's kernel", "oneDNN"])
@pytest.mark.parametrize("kind", ["pointwise", "depthwise s1", "depthwise s2", "depthwise 5x5",
                                  "depthwise on a 2x2 map"])
def test_cpu_bf16_training_paths_compute_the_same_layer(kind, kernel, monkeypatch):
    # Training under CPU bf16 autocast, ConvBNAct computes its convolution the way a CPU trains
    # fastest: depthwise layers in the package's kernel where it is built, else through oneDNN
    # (strided and 5x5 ones in fp32, tiny maps padded first); pointwise as a GEMM. Inference and
    # eval mode (exports) take the plain path. Both must be the same function.
    from mobilenets.kernels import depthwise
    from mobilenets.layers import ConvBNAct

    if kernel == "oneDNN":
        monkeypatch.setattr(depthwise, "kernel", lambda: None)
    elif depthwise.kernel() is None:
        pytest.skip("no C++ compiler to build the kernel")
    kernel_calls, depthwise_conv = [], depthwise.depthwise_conv

    def spy(conv, x):
        kernel_calls.append(x.dtype)
        return depthwise_conv(conv, x)

    monkeypatch.setattr(depthwise, "depthwise_conv", spy)
    c, size, stride, groups, k = {"pointwise": (16, 8, 1, 1, 1), "depthwise s1": (16, 8, 1, 16, 3),
                                  "depthwise s2": (16, 8, 2, 16, 3), "depthwise 5x5": (16, 8, 1, 16, 5),
                                  "depthwise on a 2x2 map": (16, 2, 1, 16, 3)}[kind]
    layer = ConvBNAct(c, c, k, stride, groups=groups)  # BN: the same batch's statistics on both paths
    x = torch.randn(4, c, size, size).to(memory_format=torch.channels_last).bfloat16()
    seen = []
    layer.conv.register_forward_hook(lambda m, inp, out: seen.append(inp[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = layer(x)
        with torch.no_grad():
            plain = layer(x)
    assert trained.dtype == plain.dtype == torch.bfloat16 and trained.shape == plain.shape
    assert torch.allclose(trained.float(), plain.float(), atol=0.05, rtol=0.02)
    trained.float().sum().backward()
    assert layer.conv.weight.grad is not None and torch.isfinite(layer.conv.weight.grad).all()
    if kernel == "package's kernel":
        assert kernel_calls == ([] if kind == "pointwise" else [torch.bfloat16])
    elif kind in ("depthwise s2", "depthwise 5x5"):
        assert seen[0] == torch.float32  # oneDNN's bf16 backward of these depthwise convs is slow
    elif kind == "depthwise s1":
        assert seen[0] == torch.bfloat16


@pytest.mark.parametrize("size, stride, k, padded", [(2, 1, 3, True), (1, 1, 3, True), (2, 2, 3, True),
                                                    (4, 1, 5, True), (3, 1, 3, False), (5, 1, 5, False)])
def test_cpu_fp32_training_pads_tiny_maps_beforehand(size, stride, k, padded, monkeypatch):
    # oneDNN's depthwise weight gradient is slow where the padding is most of the map, so fp32
    # training on the CPU pads such maps first (where the package's kernel, which takes 5x5 fp32
    # layers, is not built). Output and gradients must be the plain layer's.
    from mobilenets.kernels import depthwise
    from mobilenets.layers import ConvBNAct

    monkeypatch.setattr(depthwise, "kernel", lambda: None)

    layer = ConvBNAct(16, 16, k, stride, groups=16).to(memory_format=torch.channels_last)
    x = torch.randn(4, 16, size, size).to(memory_format=torch.channels_last).requires_grad_()
    calls = []
    layer.conv.register_forward_hook(lambda *_: calls.append(1))
    trained = layer(x)
    assert len(calls) == (0 if padded else 1)
    weight = torch.randn_like(trained)
    grads = torch.autograd.grad((trained * weight).sum(), (x, layer.conv.weight))
    plain = layer.act(layer.bn(layer.conv(x)))  # the module's own convolution, same BN batch statistics
    plain_grads = torch.autograd.grad((plain * weight).sum(), (x, layer.conv.weight))
    torch.testing.assert_close(trained, plain)
    for mine, theirs in zip(grads, plain_grads):
        torch.testing.assert_close(mine, theirs)
    calls.clear()
    layer.eval()(x)  # eval mode, as exports trace it, takes the plain path even with gradients on
    assert calls == [1]


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
@pytest.mark.parametrize("size", [1, 4])
def test_pointwise_gradient_keeps_the_kernel_strides(channels_last, size):
    # A 1x1 kernel has other strides in each layout for the same memory. Under CPU bf16 training
    # a pointwise layer runs as `linear`; its gradient must come back in the kernel's strides, or
    # DDP copies it into its buckets on every step (with a warning). A 1x1 map takes that path in
    # either layout.
    from mobilenets.layers import ConvBNAct

    layer = ConvBNAct(16, 32, kernel=1)
    x = torch.randn(2, 16, size, size)
    if channels_last:
        layer, x = layer.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x).float().sum().backward()
    assert layer.conv.weight.grad.stride() == layer.conv.weight.stride()
