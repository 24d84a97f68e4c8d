import math

import pytest
import torch

import mobilenets
from mobilenets.adapt import DataFacts, resolve
from mobilenets.optim import EpochSchedule, RMSpropTF, build_optimizer, lr_factor, param_groups
from mobilenets.recipes import RECIPES, get_recipe


def test_rmsprop_tf_matches_tensorflow_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RMSpropTF([p], lr=0.1, decay=0.9, momentum=0.9, eps=1.0)
    ms, mom, value = torch.ones(2), torch.zeros(2), p.detach().clone()
    for g in (torch.tensor([0.5, -1.5]), torch.tensor([2.0, 0.1])):
        p.grad = g.clone()
        opt.step()
        ms = 0.9 * ms + 0.1 * g * g  # TF: mean square starts at 1
        mom = 0.9 * mom + 0.1 * g / torch.sqrt(ms + 1.0)  # eps inside the root, lr inside momentum
        value = value - mom
    assert torch.allclose(p.detach(), value)


def test_no_weight_decay_on_depthwise_bn_and_bias():
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25)
    decay, no_decay = param_groups(model, 4e-5, decay_depthwise=False)
    decayed = {id(p) for p in decay["params"]}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            depthwise = module.groups == module.in_channels > 1
            assert (id(module.weight) in decayed) != depthwise, name
        if isinstance(module, torch.nn.BatchNorm2d):
            assert id(module.weight) not in decayed and id(module.bias) not in decayed
    assert id(model.classifier.bias) not in decayed and id(model.classifier.weight) in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay["weight_decay"] == 0


def test_paper_schedule_decays_094_every_two_epochs():
    r = get_recipe("paper")
    assert [lr_factor(r, e) for e in (0, 1.9, 2, 4.5)] == [1, 1, 0.94, 0.94**2]
    assert (r.optimizer, r.eps, r.rms_decay, r.momentum, r.label_smoothing) == ("rmsprop_tf", 1.0, 0.9, 0.9, 0.0)


def test_warmup_and_cosine():
    r = get_recipe("fashion-mnist").replace(epochs=10, warmup_epochs=1)
    assert lr_factor(r, 0.5) == pytest.approx(0.5, abs=0.01)
    assert lr_factor(r, 1) == pytest.approx(1)
    assert lr_factor(r, 5.5) == pytest.approx(0.5)
    assert lr_factor(r, 10) == pytest.approx(0, abs=1e-9)
    floored = r.replace(lr_floor=0.6)  # the same cosine, squeezed into [0.6, 1]
    assert [lr_factor(floored, e) for e in (1, 5.5, 10)] == pytest.approx([1, 0.8, 0.6])


def test_scheduler_steps_per_iteration_and_round_trips():
    model = torch.nn.Linear(2, 2)
    r = get_recipe("paper")
    opt = build_optimizer(model, r, lr=0.1)
    sched = EpochSchedule(opt, r, steps_per_epoch=10)
    for _ in range(25):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.94)
    again = EpochSchedule(build_optimizer(model, r, lr=0.1), r, steps_per_epoch=10)
    again.load_state_dict(sched.state_dict())
    assert again.last_epoch == 25


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_builds_its_optimizer(name):
    r = resolve(RECIPES[name], DataFacts(train_images=5000, image_size=32, channels=3))
    assert not r.unresolved
    opt = build_optimizer(mobilenets.create_model("mobilenet_v3_small", width_mult=0.5), r, r.lr)
    assert opt.param_groups[0]["weight_decay"] == r.weight_decay
    assert not math.isnan(lr_factor(r, 0.0))


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe 'fast'; known recipes: default, paper"):
        get_recipe("fast")
