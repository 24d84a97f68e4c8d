"""SSDLite-V3-Large from scratch on the generated Fashion-MNIST detection set, against
torchvision's ``ssdlite320_mobilenet_v3_large`` trained by the same loop for the same time.

Both are the same architecture (reduced tail, 3,440,060 parameters at 91 outputs; here 11),
trained by ``mobilenets train``'s loop with the same recipe, data, augmentation, default boxes
and seed; the only difference is the model's implementation. Ours runs the given number of
epochs; the peer gets the number of epochs that fits in the same time at its own measured speed
(timed side by side on the same batches before training), so both train for about the same
wall time. Prints the validation mAP of each, as ``mobilenets eval`` computes it.

    .venv/bin/python benchmarks/detection_peer.py --data runs/det-data/train.json \\
        --val-data runs/det-data/val.json --minutes 30 --out runs/det-peer

One model alone with its epochs given plans nothing and probes nothing, so it can be trained as
``mobilenets train`` is under ``torchrun`` (two processes of one thread on 2 cores):

    torchrun --standalone --nproc_per_node=2 benchmarks/detection_peer.py --only torchvision \\
        --epochs 13 --peer-epochs 13 --data runs/det-data/train.json --val-data runs/det-data/val.json \\
        --out runs/det-peer-ddp
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torchvision
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

import mobilenets.train as train_module
from mobilenets.detection.task import DetectionTask
from mobilenets.registry import ModelArgs
from mobilenets.run_config import make_config
from mobilenets.train import Trainer


class TorchvisionPeer(DetectionTask):
    """The same task with torchvision's model in place of ours."""

    def build_model(self, cfg):
        model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=len(self.class_names) + 1)
        model.args = ModelArgs("torchvision.ssdlite320_mobilenet_v3_large", num_classes=len(self.class_names) + 1)
        low, high = cfg.recipe.box_scales  # the same default boxes as ours (torchvision's: 0.2 to 0.95)
        model.anchor_generator = DefaultBoxGenerator([[2, 3]] * 6, min_ratio=low, max_ratio=high)
        return model


def images_per_second(trainer: Trainer, batches: list, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for batch in batches:
            trainer._step(batch)
        times.append(time.perf_counter() - start)
    return sum(len(b[0]) for b in batches) / statistics.median(times)


def plan_epochs(args: argparse.Namespace, config) -> int:
    """Sets our epochs (from ``--minutes``) and returns the peer's, from speeds measured side by side."""
    # speeds side by side on the same batches (throw-away trainers, nothing written)
    probes = {}
    for name, task in (("ours", DetectionTask), ("torchvision", TorchvisionPeer)):
        train_module.make_task = task
        probes[name] = Trainer(config(f"probe-{name}", args.epochs or 1), quiet=True)
    start = time.perf_counter()
    batches = [b for b, _ in zip(probes["ours"].train_loader, range(3))]
    load = (time.perf_counter() - start) / sum(len(b[0]) for b in batches)  # seconds per image, both the same
    speeds = {name: images_per_second(t, batches) for name, t in probes.items()}
    seconds_per_image = {name: load + 1 / speed for name, speed in speeds.items()}
    if args.minutes:  # plus a tenth for validation and checkpoints
        train_images = len(probes["ours"].train_loader.dataset)
        args.epochs = max(1, int(args.minutes * 60 / (1.1 * train_images * seconds_per_image["ours"])))
    peer_epochs = args.peer_epochs or max(1, round(args.epochs * seconds_per_image["ours"]
                                                   / seconds_per_image["torchvision"]))
    print(f"training images/s: ours {speeds['ours']:.1f}, torchvision {speeds['torchvision']:.1f} "
          f"({speeds['ours'] / speeds['torchvision']:.2f}x); epochs: ours {args.epochs}, torchvision {peer_epochs}")
    return peer_epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--val-data", required=True)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int, help="our epochs; the peer's follow from its speed")
    budget.add_argument("--minutes", type=float, help="our epochs from our measured speed to fit this time")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, help="default: the default recipe's for the data")
    p.add_argument("--peer-epochs", type=int, help="the peer's epochs, given instead of planned from the speeds "
                   "(the plan times training steps only, so it can leave the peer short of ours' wall time)")
    p.add_argument("--only", choices=["ours", "torchvision"],
                   help="train only this one (planned as for both, unless its epochs are given)")
    args = p.parse_args()
    out = Path(args.out)
    common = dict(val_data=args.val_data, batch_size=args.batch_size, reduced_tail=True)

    def config(name: str, epochs: int):
        return make_config("ssdlite_mobilenet_v3_large", args.data, str(out / name), epochs=epochs, **common)

    single = args.only and args.epochs and (args.peer_epochs or args.only == "ours")
    # with nothing to plan, no probes: the one run can then go under torchrun
    peer_epochs = args.peer_epochs if single else plan_epochs(args, config)

    results = {}
    for name, task, epochs in (("ours", DetectionTask, args.epochs), ("torchvision", TorchvisionPeer, peer_epochs)):
        if args.only not in (None, name):
            continue
        train_module.make_task = task
        torch.manual_seed(0)
        start = time.perf_counter()
        trainer = Trainer(config(name, epochs))
        trainer.run()
        reports = trainer.dist.is_main  # under torchrun, one process reports
        del trainer  # its model and data go before the next one's
        if not reports:
            continue
        history = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        best = max(history, key=lambda h: h["val_map"])
        results[name] = {"epochs": epochs, "minutes": (time.perf_counter() - start) / 60, **{
            k: best[f"val_{k}"] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")}}
        print(json.dumps({name: results[name]}), flush=True)
    if not results:
        return
    print(f"\n{'model':<12} {'epochs':>6} {'minutes':>8} {'mAP':>7} {'AP50':>7} {'AP75':>7}")
    for name, r in results.items():
        print(f"{name:<12} {r['epochs']:>6} {r['minutes']:>8.1f} {100 * r['map']:>6.2f}% {100 * r['map50']:>6.2f}% "
              f"{100 * r['map75']:>6.2f}%")


if __name__ == "__main__":
    main()
