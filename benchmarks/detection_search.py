"""Search a detection recipe that learns within a CPU budget, on a fast machine.

A CPU budget (say 28 minutes on 2 cores) is a number of training images at each input size:
``--probe`` measures the images per second of data loading plus training step on this
machine for each variant, and writes them to a JSON file. On a GPU, each variant then trains
on exactly the images the CPU budget allows (epochs = budget x speed / training images) and is
evaluated as ``mobilenets eval`` does; the variants run as parallel processes, each writing its
curve to ``OUT/VARIANT/metrics.jsonl`` epoch by epoch and its result to ``OUT/results.jsonl``.

    # on the CPU host: images/s of each variant
    .venv/bin/python benchmarks/detection_search.py --probe --data runs/det-data/train.json \\
        --val-data runs/det-data/val.json --out runs/det-search
    # on a GPU: every variant for the images 28 CPU minutes allow
    .venv/bin/python benchmarks/detection_search.py --data runs/det-data/train.json \\
        --val-data runs/det-data/val.json --out runs/det-search --minutes 28 --device cuda --jobs 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

import mobilenets.train as train_module
from mobilenets.detection.dataset import IMAGENET_MEAN_255
from mobilenets.detection.task import DetectionTask
from mobilenets.run_config import make_config
from mobilenets.train import Trainer

# What the package did before the search (torchvision's reference): SSD augmentation,
# torchvision's normal(0, 0.03) initialisation, lr 0.2 per 256. Each variant changes some of it:
# init "kaiming" is the package's initialisation now, box_augment "mild" its augmentation for
# short runs, "jitter" a scale jitter (0.75x to 1.33x) with flips, tried and left out.
BASE = {"box_augment": "ssd", "init": "torchvision", "lr": 0.2}
VARIANTS: dict[str, dict] = {name: {**BASE, **changes} for name, changes in {
    "base": {},
    "light": {"box_augment": "jitter"},
    "kaiming": {"init": "kaiming"},
    "light-kaiming": {"box_augment": "jitter", "init": "kaiming"},
    "light-kaiming-lr2": {"box_augment": "jitter", "init": "kaiming", "lr": 0.4},
    "light-kaiming-lr4": {"box_augment": "jitter", "init": "kaiming", "lr": 0.8},
    "light-kaiming-256": {"box_augment": "jitter", "init": "kaiming", "input_size": 256},
    "light-kaiming-224": {"box_augment": "jitter", "init": "kaiming", "input_size": 224},
    "light-kaiming-b16": {"box_augment": "jitter", "init": "kaiming", "batch_size": 16},
    "light-kaiming-adamw": {"box_augment": "jitter", "init": "kaiming", "optimizer": "adamw", "lr": 0.008,
                            "weight_decay": 0.05},
    "flip-kaiming": {"box_augment": "mild", "init": "kaiming"},
    "light-kaiming-lr2-256": {"box_augment": "jitter", "init": "kaiming", "lr": 0.4, "input_size": 256},
    "light-kaiming-lr2-224": {"box_augment": "jitter", "init": "kaiming", "lr": 0.4, "input_size": 224},
    "flip-kaiming-lr2": {"box_augment": "mild", "init": "kaiming", "lr": 0.4},
    "flip-kaiming-lr3": {"box_augment": "mild", "init": "kaiming", "lr": 0.6},
    "flip-kaiming-lr2-b16": {"box_augment": "mild", "init": "kaiming", "lr": 0.4, "batch_size": 16},
}.items()}


def jitter_augmentation(size: int, hflip: float) -> v2.Compose:
    return v2.Compose([
        v2.RandomPhotometricDistort(p=0.5),
        v2.ScaleJitter((size, size), scale_range=(0.75, 1.33), antialias=True),
        v2.RandomCrop(size, pad_if_needed=True, fill=defaultdict(lambda: 0, {tv_tensors.Image: IMAGENET_MEAN_255})),
        v2.RandomHorizontalFlip(hflip),
        v2.SanitizeBoundingBoxes(),
        v2.ToDtype(torch.float32, scale=True),
    ])


def torchvision_init(model: nn.Module) -> None:
    """torchvision's SSDLite from scratch: every convolution normal(0, 0.03), biases zero."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def task_for(name: str) -> type[DetectionTask]:
    jitter, tv_init = VARIANTS[name]["box_augment"] == "jitter", VARIANTS[name]["init"] == "torchvision"

    class Task(DetectionTask):
        def prepare(self, recipe, device):
            super().prepare(recipe.replace(box_augment="mild") if jitter else recipe, device)
            if jitter:
                self.train_set.transform = jitter_augmentation(recipe.input_size, recipe.hflip)

        def build_model(self, cfg):
            model = super().build_model(cfg)
            if tv_init:
                torchvision_init(model)
            return model

    return Task


def config(args, name: str, epochs: int | None = None):
    overrides = {k: v for k, v in VARIANTS[name].items() if k != "init"}
    if overrides["box_augment"] == "jitter":
        overrides["box_augment"] = "mild"  # replaced by the task
    overrides.setdefault("batch_size", 32)
    return make_config("ssdlite_mobilenet_v3_large", args.data, str(Path(args.out) / name), epochs=epochs or 1,
                       val_data=args.val_data, reduced_tail=True, device=args.device, workers=args.workers,
                       seed=0, subset=args.subset, **overrides)


def probe(args) -> None:
    """Images per second of loading + training step, per variant, on this machine."""
    speeds = {}
    for name in args.variants:
        train_module.make_task = task_for(name)
        trainer = Trainer(config(args, name), quiet=True)
        it = iter(trainer.train_loader)
        trainer._step(next(it))  # warm-up
        start, images = time.perf_counter(), 0
        for _ in range(args.probe_batches):
            batch = next(it)
            trainer._step(batch)
            images += len(batch[0])
        speeds[name] = images / (time.perf_counter() - start)
        print(f"{name}: {speeds[name]:.2f} images/s", flush=True)
    path = Path(args.out) / "cpu_speeds.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **speeds}, indent=2))


def run_one(args, name: str) -> None:
    speeds = json.loads((Path(args.out) / "cpu_speeds.json").read_text())
    train_module.make_task = task_for(name)
    probe_trainer = Trainer(config(args, name), quiet=True)
    n = len(probe_trainer.train_loader) * probe_trainer.train_loader.batch_size
    del probe_trainer
    epochs = max(1, math.floor(args.minutes * 60 * speeds[name] / n))
    torch.manual_seed(0)
    start = time.perf_counter()
    Trainer(config(args, name, epochs), quiet=True).run()
    history = [json.loads(line) for line in (Path(args.out) / name / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    result = {"variant": name, **VARIANTS[name], "epochs": epochs, "cpu_images_per_s": speeds[name],
              "gpu_minutes": (time.perf_counter() - start) / 60, "map": last["val_map"], "map50": last["val_map50"],
              "map75": last["val_map75"], "curve": [round(h["val_map"], 4) for h in history]}
    with open(Path(args.out) / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--probe", action="store_true", help="measure images/s of each variant here")
    p.add_argument("--probe-batches", type=int, default=4)
    p.add_argument("--minutes", type=float, default=28.0, help="the CPU budget each variant gets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once (separate processes)")
    p.add_argument("--subset", type=int, default=None, help="first N training images only (a quick check)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.probe:
        return probe(args)
    if args.one:
        return run_one(args, args.one)
    pending, running = list(args.variants), []
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(Path(args.out) / f"{name}.log", "w")
            cmd = [sys.executable, __file__, *sys.argv[1:], "--one", name]
            running.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ))
        time.sleep(2)
        running = [r for r in running if r.poll() is None]


if __name__ == "__main__":
    main()
