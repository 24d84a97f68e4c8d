"""The default recipe adapts to the data and the run; another optimizer brings its own defaults."""

import pytest
import torch
from datasets import image_folder

from mobilenets.adapt import DataFacts, batch_size_for, ema_decay_for, input_size_for, resolve
from mobilenets.data import batch_mix
from mobilenets.recipes import OPTIMIZERS, get_recipe
from mobilenets.run_config import make_config
from mobilenets.train import Trainer


def test_input_size_follows_the_images():
    # small images are upscaled (3x) so that the last layers see more than 1x1; photos stay at 224
    assert [input_size_for(s) for s in (20, 28, 32, 48, 100, 500)] == [64, 96, 96, 160, 224, 224]


def test_batch_size_and_ema_follow_the_training_set():
    assert [batch_size_for(n) for n in (300, 4000, 55000, 1_000_000)] == [16, 64, 128, 128]
    assert batch_size_for(4000, world_size=2) == 32 and batch_size_for(4000, steps=120) == 32
    # detectors (detection/task.py): ~240 steps an epoch, batch 8 to 32
    assert [batch_size_for(n, 1, 240, 8, 32) for n in (24, 2000, 4000, 8000, 20000)] == [8, 8, 16, 32, 32]
    # the floor is for a step in all processes: 2 processes keep one process's global batch
    assert batch_size_for(2000, 2, 240, 8, 32) == 4 and batch_size_for(300, world_size=2) == 8
    assert batch_size_for(24, 8, 240, 8, 32) == 4 and batch_size_for(300, world_size=3) == 8  # 4+ per process
    assert ema_decay_for(500) == 0.98 and ema_decay_for(50) == 0.9 and ema_decay_for(10**7) == 0.9999


def test_default_recipe_resolves_from_the_data():
    digits = resolve(get_recipe("default").replace(epochs=8), DataFacts(4000, 20, 1))
    assert not digits.unresolved
    # AdamW with its own weight decay; batch 32 for ~120 steps an epoch, 0.008 per step: 0.064 per 256
    assert (digits.optimizer, digits.weight_decay, digits.eps) == ("adamw", OPTIMIZERS["adamw"].weight_decay, 1e-8)
    assert (digits.input_size, digits.batch_size, digits.lr, digits.warmup_epochs) == (64, 32, 0.064, 1.0)
    assert (digits.min_crop, digits.eval_crop, digits.pad, digits.ema_decay) == (0.9, 1.0, 2, 0.99)  # 8 x 125 steps
    assert digits.bn_recompute == 32  # 1,024 images of 32
    assert resolve(get_recipe("default"), DataFacts(120, 40, 3)).bn_recompute == 8  # all 120 images, batch 16
    big = resolve(get_recipe("default"), DataFacts(55000, 28, 1))
    assert big.batch_size == 128 and big.lr * 128 / 256 == pytest.approx(0.008)  # the same lr per step
    two = resolve(get_recipe("default").replace(epochs=8), DataFacts(4000, 20, 1), world_size=2)
    assert (two.batch_size, two.lr) == (16, 0.064)  # the global batch (2 x 16) counts
    # SGD, when asked for, keeps the default's lr rule: 0.4 per 256, never under the lr per step of batch 64
    sgd = resolve(make_config("mobilenet_v1", "d", "o", optimizer="sgd", epochs=8).recipe, DataFacts(4000, 20, 1))
    assert (sgd.optimizer, sgd.weight_decay, sgd.batch_size, sgd.lr) == ("sgd", OPTIMIZERS["sgd"].weight_decay, 32, 0.8)
    sgd_recipe = make_config("mobilenet_v1", "d", "o", optimizer="sgd").recipe
    assert resolve(sgd_recipe, DataFacts(55000, 28, 1)).lr == 0.4  # batch 128: linear scaling
    # a detector's task resolves the optimizer to SGD
    assert resolve(get_recipe("default"), DataFacts(2000, 320, 3), optimizer="sgd").optimizer == "sgd"
    photos = resolve(get_recipe("default").replace(epochs=50), DataFacts(20000, 375, 3))
    assert (photos.input_size, photos.min_crop, photos.eval_crop, photos.warmup_epochs) == (224, 0.25, 0.875, 5.0)
    # detection: SSD's zoom out and IoU crop only in long runs
    assert (digits.box_augment, photos.box_augment) == ("mild", "ssd")
    # what the user sets is kept, and a named recipe has nothing left to decide
    mine = resolve(get_recipe("default").replace(input_size=96, ema_decay=0.0, lr=0.1), DataFacts(4000, 20, 1))
    assert (mine.input_size, mine.ema_decay, mine.lr) == (96, 0.0, 0.1)
    paper = get_recipe("paper")
    assert resolve(paper, DataFacts(4000, 20, 1)) == paper


def test_another_optimizer_brings_its_own_defaults():
    cfg = make_config("mobilenet_v1", "data", "out", recipe="paper", optimizer="adamw")
    adamw = OPTIMIZERS["adamw"]
    assert (cfg.recipe.optimizer, cfg.recipe.eps, cfg.recipe.lr, cfg.recipe.weight_decay) == (
        "adamw", adamw.eps, adamw.lr, adamw.weight_decay)
    assert cfg.recipe.eps != get_recipe("paper").eps  # RMSprop's epsilon of 1.0 would stall AdamW
    cfg = make_config("mobilenet_v1", "data", "out", recipe="paper", optimizer="adamw", lr=1e-3, weight_decay=0.01)
    assert (cfg.recipe.lr, cfg.recipe.weight_decay) == (1e-3, 0.01)
    assert make_config("mobilenet_v1", "data", "out", recipe="paper", optimizer="rmsprop_tf").recipe == \
        get_recipe("paper")


@pytest.mark.parametrize("field, value", [("hflip", 1.5), ("min_crop", 0.0), ("weight_decay", -1.0),
                                          ("warmup_epochs", -1.0), ("epochs", 0), ("backbone_lr_scale", 0.0),
                                          ("mixup", -0.2), ("cutmix", -1.0), ("erase", 1.5), ("dropout", 2.0)])
def test_bad_values_are_named(field, value):
    with pytest.raises(ValueError, match=field.replace("_", "-") + " must be in"):
        get_recipe("default").replace(**{field: value})
    with pytest.raises(ValueError, match="unknown optimizer 'lamb'"):
        make_config("mobilenet_v1", "data", "out", optimizer="lamb")


def test_resolved_recipe_is_printed_and_stored(tmp_path, capfd):
    root = image_folder(tmp_path / "d", classes=3, per_class=10, size=20, channels=1)
    cfg = make_config("mobilenet_v1", str(root), str(tmp_path / "run"), width_mult=0.25, epochs=1, hflip=0.0,
                      mixup=0.2, cutmix=1.0)
    trainer = Trainer(cfg)
    summary = trainer.run()
    err = capfd.readouterr().err
    assert "recipe default: 1 epochs, batch 16, input 64, adamw lr 0.128 per 256" in err and "hflip 0," in err
    assert "mixup 0.2, cutmix 1" in err
    stored = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]["recipe"]
    assert stored["input_size"] == 64 and stored["batch_size"] == 16 and stored["hflip"] == 0.0
    assert (stored["mixup"], stored["cutmix"], stored["lr_floor"]) == (0.2, 1.0, 0.0)
    assert stored["eval_crop"] == 1.0 and stored["ema_decay"] == 0.9
    assert stored["bn_recompute"] == 2 and "BN statistics recomputed on 2 batches" in err  # 24 images, batch 16
    assert summary["epochs"] == 1


def test_a_batch_larger_than_the_data_is_cut_to_it_and_said(tmp_path, capfd):
    root = image_folder(tmp_path / "d", classes=2, per_class=10, size=20, channels=1)
    cfg = make_config("mobilenet_v1", str(root), str(tmp_path / "run"), recipe="paper", width_mult=0.25,
                      input_size=32, epochs=1)
    trainer = Trainer(cfg)  # the paper's batch of 96 for 20 images
    assert trainer.recipe.batch_size == 20 and trainer.steps_per_epoch == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.recipe.lr * 20 / 32)  # per 32 images
    trainer.run()
    assert "note: batch 96 is more than the 20 training images per process: batch 20" in capfd.readouterr().err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]["recipe"]["batch_size"] == 20


def test_batch_mix_blends_images_and_labels_alike():
    images, labels = torch.rand(8, 1, 32, 32), torch.arange(8) % 4  # each image's neighbour has another class
    assert batch_mix(0.0, 0.0, 4) is None
    for mixup, cutmix in ((0.2, 0.0), (0.0, 1.0), (0.2, 1.0)):
        torch.manual_seed(0)
        mixed, targets = batch_mix(mixup, cutmix, 4)(images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, 4)
        assert torch.allclose(targets.sum(1), torch.ones(8))
        own = targets[0, labels[0]].item()  # the image's own share; the rest is its neighbour's class
        assert 0 < own < 1 and torch.allclose(targets[0, labels.roll(1)[0]], torch.tensor(1 - own))
        if not cutmix:  # MixUp: the image and its neighbour weighted by their shares
            assert torch.allclose(mixed, own * images + (1 - own) * images.roll(1, 0), atol=1e-6)
        elif not mixup:  # CutMix: a rectangle pasted from the neighbour, its area the neighbour's share
            assert (mixed == images).float().mean().item() == pytest.approx(own)
