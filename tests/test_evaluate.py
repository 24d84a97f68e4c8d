"""Test-time augmentation: the views and their average."""

import math

import pytest
import torch

from mobilenets.evaluate import tta_views, with_tta


def test_views_are_the_mirror_and_one_step_shifts():
    x = torch.arange(2 * 1 * 64 * 64, dtype=torch.float32).reshape(2, 1, 64, 64)
    assert [len(tta_views(x, v)) for v in ("flip", "shift", "flip-shift")] == [2, 5, 10]
    flip = tta_views(x, "flip")
    assert torch.equal(flip[0], x) and torch.equal(flip[1], x.flip(-1))
    same, down, up, right, left = tta_views(x, "shift")  # moved by 2 px at 64: round(64 / 32)
    assert torch.equal(same, x) and all(v.shape == x.shape for v in (down, up, right, left))
    assert torch.equal(down[..., 2:, :], x[..., :-2, :])
    assert torch.equal(down[..., :2, :], x[..., :1, :].expand(2, 1, 2, 64))  # the edge repeated
    assert torch.equal(up[..., :-2, :], x[..., 2:, :])
    assert torch.equal(right[..., :, 2:], x[..., :, :-2]) and torch.equal(left[..., :, :-2], x[..., :, 2:])
    assert torch.equal(tta_views(x, "flip-shift")[5], x.flip(-1))


def test_average_is_the_log_of_the_mean_probability():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 32, 32)
    weight = torch.randn(4, 32 * 32)

    def forward(images):
        return images.flatten(1) @ weight.T

    for views in ("flip", "shift", "flip-shift"):
        probs = torch.stack([forward(v).softmax(1) for v in tta_views(x, views)]).mean(0)
        assert torch.allclose(with_tta(forward, views)(x), probs.log(), atol=1e-5)
    assert math.isclose(with_tta(forward, "flip")(x).exp().sum(1)[0].item(), 1.0, rel_tol=1e-5)


def test_unknown_views_are_refused_at_once():
    with pytest.raises(ValueError, match="unknown TTA views 'rotate'"):
        with_tta(lambda x: x, "rotate")


def test_a_class_without_images_reads_n_a():
    from mobilenets.evaluate import EvalResult

    confusion = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # no image of class c
    result = EvalResult(loss=0.5, top1=5 / 6, top5=1.0, count=6, confusion=confusion)
    assert result.per_class == [0.75, 1.0, None]
    assert result.format(["a", "b", "c"]).splitlines()[-1] == "  c     n/a"
    assert "top-3 100.00 %" in result.format(["a", "b", "c"])



def test_predict_averages_the_views_probabilities(tmp_path):
    from PIL import Image

    from mobilenets.predict import LoadedModel, predict
    from mobilenets.preprocess import Preprocess

    torch.manual_seed(0)  # a model whose answer changes in the mirror: no pooling before its linear layer
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    loaded = LoadedModel(model.eval(), Preprocess.imagenet(32), [f"c{k}" for k in range(10)])
    path = tmp_path / "a.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(path)
    x = loaded.preprocess.load_batch([path])
    with torch.no_grad():
        probs = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    (top,) = predict(loaded, [path], top_k=3, tta="flip")
    values, indices = probs[0].topk(3)
    assert [name for name, _ in top] == [loaded.class_names[i] for i in indices]
    assert [p for _, p in top] == pytest.approx(values.tolist(), abs=1e-6)
    (plain,) = predict(loaded, [path], top_k=3)
    assert [p for _, p in plain] != pytest.approx(values.tolist(), abs=1e-6)  # the views differ
