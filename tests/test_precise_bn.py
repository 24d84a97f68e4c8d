"""Batch-norm statistics recomputed for the weights being evaluated."""

import pytest
import torch
from torch import nn

from mobilenets.precise_bn import bn_buffers, recompute_bn_stats


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))


def test_the_statistics_are_the_average_over_the_batches():
    model = net().train()
    batches = [torch.randn(8, 3, 10, 10) * (i + 1) + i for i in range(3)]
    assert recompute_bn_stats(model, iter(batches)) == 3
    with torch.no_grad():
        maps = [model[0](x) for x in batches]
    mean = torch.stack([m.mean(dim=(0, 2, 3)) for m in maps]).mean(0)
    var = torch.stack([m.var(dim=(0, 2, 3)) for m in maps]).mean(0)  # unbiased per batch, as BN keeps it
    assert torch.allclose(model[1].running_mean, mean, atol=1e-5)
    assert torch.allclose(model[1].running_var, var, rtol=1e-4)
    assert model[1].momentum == 0.1 and model[4].momentum == 0.1  # restored
    assert len(bn_buffers(model)) == 4


def test_layers_in_eval_mode_and_no_batches_keep_their_statistics():
    model = net().train()
    model[1].eval()  # a frozen backbone's layer
    before = [t.clone() for t in bn_buffers(model)]
    recompute_bn_stats(model, [torch.randn(4, 3, 10, 10) + 3])
    after = bn_buffers(model)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.equal(after[2], before[2])
    again = [t.clone() for t in after]
    assert recompute_bn_stats(model, []) == 0
    assert all(torch.equal(a, b) for a, b in zip(bn_buffers(model), again))


def test_bn_recompute_is_for_classifiers():
    from mobilenets.run_config import TrainingError, make_config

    with pytest.raises(TrainingError, match="--bn-recompute is for classifiers"):
        make_config("ssdlite_mobilenet_v3_small", "train.json", "out", bn_recompute=4)
