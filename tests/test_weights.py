"""Weights saved by torchvision and timm load into the matching models and give the same logits."""

import contextlib
import re

import pytest
import timm
import torch
import torchvision
from model_helpers import randomize_batchnorm
from safetensors.torch import save_file

import mobilenets
from mobilenets.predict import load_model
from mobilenets.state_order import in_module_order
from mobilenets.weights import adapt_input_conv, detect_format

PEERS = {  # our model -> its peer as torchvision or timm builds it
    "mobilenet_v1": lambda: timm.create_model("mobilenetv1_100", pretrained=False),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "mobilenet_v3_large": lambda: torchvision.models.mobilenet_v3_large(),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
}
TIMM_PEERS = {"mobilenet_v2": "mobilenetv2_100", "mobilenet_v3_large": "mobilenetv3_large_100",
              "mobilenet_v3_small": "mobilenetv3_small_100"}


def save_peer(state_dict: dict, path, how: str) -> None:
    """As the peers' files come: ``torch.save``, or safetensors (tensors stored sorted by name, so
    the layer order is lost), with or without BatchNorm's ``num_batches_tracked``."""
    if how == "torch":
        torch.save(state_dict, path)
    else:
        drop = "no num_batches_tracked" in how
        save_file({k: v for k, v in state_dict.items() if not (drop and k.endswith("num_batches_tracked"))}, path)


@pytest.mark.parametrize("how", ["torch", "safetensors", "safetensors, no num_batches_tracked"])
@pytest.mark.parametrize("name", list(PEERS))
def test_peer_weights_give_same_logits(name, how, tmp_path):
    peer = randomize_batchnorm(PEERS[name]())
    path = tmp_path / ("peer.pth" if how == "torch" else "model.safetensors")
    save_peer(peer.state_dict(), path, how)
    ours = mobilenets.create_model(name, weights=path).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = peer(x), ours(x)
    assert expected.abs().max() > 1e-3  # the comparison is not between two zero tensors
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("how", ["torch", "safetensors"])
@pytest.mark.parametrize("name", list(TIMM_PEERS))
def test_timm_v2_v3_weights_give_same_logits(name, how, tmp_path):
    peer = randomize_batchnorm(timm.create_model(TIMM_PEERS[name], pretrained=False))
    path = tmp_path / ("peer.pth" if how == "torch" else "model.safetensors")
    save_peer(peer.state_dict(), path, how)
    with pytest.warns(UserWarning, match="eps 1e-05 as timm's") if "v3" in name else contextlib.nullcontext():
        ours = mobilenets.create_model(name, weights=path).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected, got = peer(x), ours(x)
    assert expected.abs().max() > 1e-3
    assert (got - expected).abs().max() < 1e-4 * max(1.0, expected.abs().max().item())


def test_timm_v3_weights_bring_timms_bn_eps(tmp_path):
    """timm's V3 normalises with eps 1e-5, the reference code's (ours) with 1e-3: the file decides,
    says so, and the checkpoints and exports made from the model keep it."""
    peer = randomize_batchnorm(timm.create_model("mobilenetv3_small_100"))
    torch.save(peer.state_dict(), tmp_path / "t.pth")
    with pytest.warns(UserWarning, match=r"batch-norm eps 1e-05 as timm's \(the model's was 0.001\)"):
        tuned = mobilenets.create_model("mobilenet_v3_small", num_classes=5, weights=tmp_path / "t.pth")
    norms = [m for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert tuned.args.bn_eps == 1e-5 and {m.eps for m in norms} == {1e-5}
    mobilenets.save_weights(tuned, tmp_path / "tuned.pt")
    loaded = load_model(tmp_path / "tuned.pt")  # rebuilt from the checkpoint's model arguments
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), tuned.eval()(x))
    strict = load_model(model="mobilenet_v3_small", weights=tmp_path / "t.pth").model  # predict and export's load
    with torch.no_grad():
        assert (strict(x) - peer(x)).abs().max() < 1e-4
    with pytest.raises(ValueError, match=r"bn_eps must be in \(0, 1\), got 0"):
        mobilenets.create_model("mobilenet_v3_small", bn_eps=0)


def test_v1_relu_variant_matches_timm_relu(tmp_path):
    peer = randomize_batchnorm(timm.create_model("mobilenetv1_100", pretrained=False, act_layer="relu"))
    torch.save(peer.state_dict(), tmp_path / "p.pth")
    ours = mobilenets.create_model("mobilenet_v1", act="relu", weights=tmp_path / "p.pth").eval()
    x = torch.randn(1, 3, 64, 64) * 4
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max() < 1e-4


def test_formats_are_detected():
    assert detect_format(torchvision.models.mobilenet_v2().state_dict()) == "torchvision"
    assert detect_format(timm.create_model("mobilenetv1_100").state_dict()) == "timm"
    assert detect_format(mobilenets.create_model("mobilenet_v2").state_dict()) == "mobilenets"


@pytest.mark.parametrize("name", list(mobilenets.MODELS))
def test_own_round_trip(name, tmp_path):
    model = randomize_batchnorm(mobilenets.create_model(name, width_mult=0.5, num_classes=5))
    mobilenets.save_weights(model, tmp_path / "w.pt")
    again = mobilenets.create_model(name, width_mult=0.5, num_classes=5, weights=tmp_path / "w.pt").eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_plain_state_dict_loads(tmp_path):
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    mobilenets.create_model("mobilenet_v1", width_mult=0.25, weights=tmp_path / "sd.pt")


def test_trainer_checkpoints_load_as_timm_reads_them(tmp_path):
    """A timm training checkpoint (EMA weights preferred) saved from a compiled model under DDP."""
    raw, ema = (randomize_batchnorm(torchvision.models.mobilenet_v3_small(), seed=s) for s in (0, 1))
    wrapped = {f"module._orig_mod.{k}": v for k, v in ema.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": raw.state_dict(), "state_dict_ema": wrapped}, tmp_path / "t.pth")
    ours = mobilenets.create_model("mobilenet_v3_small", weights=tmp_path / "t.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - ema(x)).abs().max() < 1e-4
        assert (ours(x) - raw(x)).abs().max() > 1e-3  # the EMA weights, not the raw ones


def test_features_only_loads_classifier_weights(tmp_path):
    peer = randomize_batchnorm(torchvision.models.mobilenet_v3_small())
    torch.save(peer.state_dict(), tmp_path / "p.pth")
    backbone = mobilenets.create_model("mobilenet_v3_small", weights=tmp_path / "p.pth", features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (backbone(x)[-1] - peer.features(x)).abs().max() < 1e-4


@pytest.mark.parametrize(
    "source, kwargs, message",
    [
        (lambda: torchvision.models.mobilenet_v2(), {"name": "mobilenet_v3_large"},
         r"torchvision checkpoint does not fit mobilenet_v3_large"),
        (lambda: torchvision.models.mobilenet_v2(), {"name": "mobilenet_v2", "in_chans": 4, "width_mult": 0.5},
         r"torchvision checkpoint does not fit .*: features.0.0.weight is \(32, 3, 3, 3\) in the file, the model's "
         r"stem.conv.weight needs \(16, 4, 3, 3\)"),
        (lambda: torchvision.models.mobilenet_v2(width_mult=0.5), {"name": "mobilenet_v2"},
         r"features.0.0.weight is \(16, 3, 3, 3\).*\(32, 3, 3, 3\)"),
        (lambda: timm.create_model("mobilenetv1_100"), {"name": "mobilenet_v1_shallow"},
         "timm checkpoint does not fit"),
        (lambda: mobilenets.create_model("mobilenet_v1", width_mult=0.5), {"name": "mobilenet_v1"},
         r"stem.conv.weight is \(16, 3, 3, 3\) in the file, the model's stem.conv.weight needs \(32, 3, 3, 3\)"),
        (lambda: mobilenets.create_model("mobilenet_v1"), {"name": "mobilenet_v2"},
         r"it has no blocks.0.project.conv.weight"),
    ],
)
def test_mismatched_checkpoint_names_first_mismatch(tmp_path, source, kwargs, message):
    torch.save(source().state_dict(), tmp_path / "w.pt")
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=message):
        mobilenets.create_model(name, weights=tmp_path / "w.pt", **kwargs)


def test_missing_weights_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        mobilenets.create_model("mobilenet_v1", weights=tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage", b"junk\n"])
def test_corrupt_weights_file(tmp_path, content):
    (tmp_path / "bad.pt").write_bytes(content)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        mobilenets.create_model("mobilenet_v1", weights=tmp_path / "bad.pt")


def test_truncated_weights_file(tmp_path):
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25)
    mobilenets.save_weights(model, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        mobilenets.create_model("mobilenet_v1", width_mult=0.25, weights=tmp_path / "w.pt")


def test_foreign_tensors_are_put_back_in_their_models_order():
    """safetensors files store their tensors sorted by name; the models' own order is recovered."""
    peers = [factory() for factory in PEERS.values()] + [timm.create_model(n) for n in TIMM_PEERS.values()]
    peers.append(torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None))
    for peer in peers:
        state = peer.state_dict()
        assert list(in_module_order(dict(sorted(state.items())))) == list(state)


def test_corrupt_safetensors_file(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match=r"w.safetensors is not a readable safetensors file \(.+\)$"):
        mobilenets.create_model("mobilenet_v1", weights=tmp_path / "w.safetensors")


def test_unrecognised_state_dict(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="unrecognised weights"):
        mobilenets.create_model("mobilenet_v1", weights=tmp_path / "w.pt")


def test_weights_only_refuses_pickled_objects(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small(), tmp_path / "w.pt")  # the whole model, not its state dict
    for num_classes in (1000, 5):  # loading as it is, and fine-tuning
        with pytest.raises(ValueError) as info:
            mobilenets.create_model("mobilenet_v3_small", weights=tmp_path / "w.pt", num_classes=num_classes)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / 'w.pt'} holds a pickled Python object "
                                  "(torchvision.models.mobilenetv3.MobileNetV3), not tensors: save model.state_dict()")
        assert "\n" not in message and "\x1b" not in message and "weights_only` argument" not in message


def test_corrupt_weights_file_names_the_fault_not_torchs_advice(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError) as info:
        mobilenets.create_model("mobilenet_v1", weights=tmp_path / "bad.pt")
    assert str(info.value) == f"{tmp_path / 'bad.pt'} is not a readable PyTorch checkpoint (Unsupported operand 110)"


@pytest.mark.parametrize(("name", "kind"), [("bad.ts", "TorchScript file or PyTorch checkpoint"),
                                            ("bad.pt2", "torch.export archive (.pt2)")])
def test_corrupt_export_is_named_by_its_suffix(tmp_path, name, kind):
    (tmp_path / name).write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / name))} is not a readable {re.escape(kind)} \("):
        mobilenets.create_model("mobilenet_v1", weights=tmp_path / name)


def test_finetuning_reinitialises_a_classifier_for_other_classes(tmp_path):
    source = torchvision.models.mobilenet_v2()
    torch.save(source.state_dict(), tmp_path / "tv.pt")
    with pytest.warns(UserWarning) as record:
        model = mobilenets.create_model("mobilenet_v2", num_classes=10, weights=tmp_path / "tv.pt")
    assert len(record) == 1 and "classifier re-initialised: 1000 -> 10 classes" in str(record[0].message)
    theirs = list(source.state_dict().values())
    ours = list(model.state_dict().items())
    assert all(torch.equal(t, v) for t, (k, v) in zip(theirs, ours) if not k.startswith("classifier"))
    assert model.classifier.weight.shape == (10, 1280) and model.classifier.weight.abs().max() < 0.1  # fresh init
    # loading for inference stays strict: the mismatch is an error naming the tensor
    with pytest.raises(ValueError, match=r"classifier.1.weight is \(1000, 1280\).*needs \(10, 1280\)"):
        mobilenets.load_weights(mobilenets.create_model("mobilenet_v2", num_classes=10), tmp_path / "tv.pt")


def test_grey_stem_from_rgb_sums_the_filters(tmp_path):
    source = randomize_batchnorm(torchvision.models.mobilenet_v3_small())
    torch.save(source.state_dict(), tmp_path / "tv.pt")
    with pytest.warns(UserWarning, match=r"stem adapted: features.0.0.weight from 3 to 1 input channel\(s\) "
                      r"\(RGB filters summed"):
        grey = mobilenets.create_model("mobilenet_v3_small", in_chans=1, num_classes=5, weights=tmp_path / "tv.pt")
    assert torch.allclose(grey.stem.conv.weight, source.features[0][0].weight.sum(1, keepdim=True))
    x = torch.rand(2, 1, 64, 64)
    grey.eval()
    with torch.no_grad():  # a grey image is R = G = B: the same features
        assert torch.allclose(grey.forward_features(x), source.features(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_adapt_input_conv_keeps_the_response():
    w = torch.randn(8, 3, 3, 3)
    x = torch.randn(1, 1, 9, 9)
    assert torch.allclose(torch.conv2d(x, adapt_input_conv(w, 1)), torch.conv2d(x.expand(-1, 3, -1, -1), w),
                          atol=1e-5)
    w4 = adapt_input_conv(w, 4)  # more channels: the filters repeated, scaled by 3 / 4 as timm does
    assert torch.equal(w4, torch.cat([w, w[:, :1]], dim=1) * 0.75)
