"""Training: the loop, EMA, mixed precision, DDP, checkpoints that survive a kill, metrics.

Every epoch ends with ``last.pt`` (and ``best.pt`` when the task's validation metric improves),
``metrics.jsonl``, TensorBoard events and ``curves.png``, each written atomically by rank 0.
Randomness is re-seeded from (seed, rank, epoch) at every epoch start, so a run resumed at an
epoch boundary repeats the uninterrupted run exactly (on CPU).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from . import distributed
from .detection.model import load_backbone_weights
from .files import atomic_write, save_torch
from .finetune import freeze_backbone, train_mode
from .kernels import build_all
from .memory import keep_freed_memory
from .optim import EpochSchedule, build_optimizer
from .plots import plot_curves
from .precise_bn import bn_buffers, recompute_bn_stats
from .precision import amp_dtype, autocast
from .registry import create_model
from .run_config import CHECKPOINT_FORMAT, TrainConfig, TrainingError, read_train_checkpoint
from .tasks import StepResult, make_task
from .weights import load_pretrained


def ema_with_warmup(decay: float):
    """EMA update for ``AveragedModel`` whose decay ramps up as (1 + n) / (10 + n), capped at ``decay``.

    Without the ramp the average holds the random initial weights for thousands of steps and
    evaluates at chance in the first epochs (timm's ModelEmaV3 warms up the same way).
    """

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - d)
        else:  # integer buffers (BN's num_batches_tracked) are copied
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update


def seed_epoch(seed: int, rank: int, epoch: int) -> None:
    torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


class StopFlag:
    """SIGINT / SIGTERM ask the loop to save and stop after the current step; a second Ctrl-C kills."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = True
        print("\nstopping: saving a checkpoint after this step (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One training run. ``run()`` trains from scratch or from ``last.pt`` and returns the summary.

    What is learned (data, model, loss, metrics) is the task's (``tasks.make_task``); the loop,
    optimizer, schedule, EMA, mixed precision, DDP, checkpoints and logs are the trainer's.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        self.quiet = quiet
        self.out = Path(cfg.out)
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        if self.device.type == "cpu":
            keep_freed_memory()
        if not resume and (self.out / "last.pt").exists():
            raise TrainingError(f"{self.out} already holds a run (last.pt): pass --resume to continue it, "
                                "or choose another --out")
        if cfg.recipe.freeze_backbone and not (cfg.weights or cfg.weights_backbone):
            raise TrainingError("--freeze-backbone needs --weights or --weights-backbone FILE: a backbone trained "
                                "from scratch would stay at its random initialisation")
        self.task = make_task(cfg)
        # the default recipe decides what it left AUTO from the data; a resumed run is already resolved
        recipe = self.task.resolve(cfg.recipe, self.dist.world_size)
        images = len(self.task.train_set) // self.dist.world_size  # per process
        asked = recipe.batch_size
        if 2 <= images < asked:  # the batch, its learning rate and what is printed and stored all follow
            recipe = recipe.replace(batch_size=images)
        self.cfg = dataclasses.replace(cfg, recipe=recipe)
        self.recipe = r = self.cfg.recipe
        self.task.prepare(r, self.device)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = self.task.build_model(self.cfg)
        self.notes = [] if resume else self._start_weights()
        if r.batch_size != asked:
            self.notes.append(f"note: batch {asked} is more than the {images} training images per process: "
                              f"batch {images}, one step an epoch")
        if r.freeze_backbone:
            freeze_backbone(self.model)
        self.model_args = self.model.args
        self.memory_format = torch.channels_last if r.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_with_warmup(r.ema_decay), use_buffers=True)
            if r.ema_decay else None
        )
        self.history: list[dict] = []
        self.epoch, self.step_in_epoch, self.best = 0, 0, -math.inf
        self.partial: dict[str, float] = {}
        global_batch = r.batch_size * self.dist.world_size
        self.optimizer = build_optimizer(self.model, r, r.lr * global_batch / r.lr_batch)
        self.train_loader = self._train_loader()
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = EpochSchedule(self.optimizer, r, self.steps_per_epoch)
        self.amp_dtype = amp_dtype(self.device, r.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if resume:
            self._load(self.out / "last.pt")
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if r.compile:
            self.net = torch.compile(self.net)
        self.writer = None

    # ------------------------------------------------------------------ data

    def _train_loader(self, skip_batches: int = 0) -> DataLoader:
        train = self.task.train_set
        batch = self.recipe.batch_size  # no more than the images of a process (__init__)
        if min(batch, len(train) // self.dist.world_size) < 2:
            raise TrainingError(f"the training set has {len(train)} images: too few to train on")
        sampler = DistributedSampler(
            train, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=self.cfg.seed,
            drop_last=True,
        )
        sampler.set_epoch(self.epoch)
        if skip_batches:  # resume in the middle of an epoch: the same order, minus what was done
            sampler = list(sampler)[skip_batches * batch :]
        return DataLoader(
            train, batch_size=batch, sampler=sampler, drop_last=True, num_workers=self.cfg.workers,
            collate_fn=self.task.collate, persistent_workers=False, pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------ steps

    def _step(self, batch) -> tuple[StepResult, bool]:
        """One optimizer step, and whether the loss diverged (then nothing is changed)."""
        result = self.task.step(self.net, batch, self.device, lambda: autocast(self.device, self.amp_dtype))
        (diverged,) = self.dist.any(not math.isfinite(result.value))
        if diverged:
            return result, True
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return result, False

    def _train_epoch(self, stop: StopFlag) -> dict[str, float] | None:
        """Train one epoch (or its rest); ``None`` when stopped by a signal."""
        sums = self.partial or {"loss": 0.0, "count": 0.0, "seconds": 0.0}
        images_per_step = self.train_loader.batch_size * self.dist.world_size
        bar = tqdm(
            total=self.steps_per_epoch * images_per_step, initial=self.step_in_epoch * images_per_step,
            desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}", unit="img", unit_scale=True, leave=False,
            disable=None if self.dist.is_main and not self.quiet else True, dynamic_ncols=True,
        )
        start = time.perf_counter() - sums["seconds"]
        loader = self.train_loader if not self.step_in_epoch else self._train_loader(self.step_in_epoch)
        with bar:
            for batch in loader:
                if self.task.batch_size_of(batch) < 2:
                    continue
                result, diverged = self._step(batch)
                if diverged:
                    raise TrainingError(
                        f"loss became {result.value} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} "
                        f"(lr {self.optimizer.param_groups[0]['lr']:.4g}); stopped. The last good checkpoint is "
                        f"{self.out / 'last.pt'}" + (f" (epoch {self.epoch})" if self.epoch else " (none yet)")
                    )
                n = result.count
                sums["loss"] += result.value * n
                sums["count"] += n
                for key, value in result.stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                self.step_in_epoch += 1
                seconds = time.perf_counter() - start
                bar.update(n * self.dist.world_size)
                bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.3f}",
                                **{k: f"{sums[k] / sums['count']:.3f}" for k in result.stats},
                                lr=f"{self.optimizer.param_groups[0]['lr']:.3g}", refresh=False)
                (stopping,) = self.dist.any(stop.raised)
                sums["seconds"] = seconds
                if stopping:
                    self.partial = sums
                    return None
        keys = [k for k in sums if k not in ("count", "seconds")]
        totals = dict(zip(keys + ["count"], self.dist.sum([sums[k] for k in keys] + [sums["count"]])))
        self.partial = {}
        return {
            **{f"train_{k}": totals[k] / totals["count"] for k in keys},
            "train_images_per_s": totals["count"] / sums["seconds"],
            "train_seconds": sums["seconds"],
        }

    def evaluate(self, model: nn.Module | None = None, split: str = "val") -> dict[str, float]:
        """The task's metrics of the evaluated weights (EMA, else the model) on ``split``."""
        model = model or (self.ema.module if self.ema is not None else self.model)
        model.eval()
        try:
            return self.task.evaluate(model, self.dist, split, self.cfg.workers)
        finally:
            train_mode(model, self.recipe.freeze_backbone)

    def _recompute_bn(self) -> None:
        """The evaluated weights' BN statistics from ``bn_recompute`` training batches (precise_bn.py),
        averaged over the processes."""
        model = self.ema.module if self.ema is not None else self.model
        train_mode(model, self.recipe.freeze_backbone)  # a frozen backbone keeps its statistics
        batches = itertools.islice(self.train_loader, self.recipe.bn_recompute)
        recompute_bn_stats(model, (self.task.model_inputs(b, self.device)[0] for b in batches))
        if self.dist.enabled:
            for t in bn_buffers(model):
                self.dist.all_reduce_(t).div_(self.dist.world_size)

    def _final_test(self) -> dict:
        """The best epoch's weights on the test set, once, at the end (the validation set chose them)."""
        self.dist.barrier()  # rank 0 has written best.pt
        model = create_model(**self.model_args.to_dict())
        model.load_state_dict(read_train_checkpoint(self.out / "best.pt")["model"])
        model.to(self.device, memory_format=self.memory_format)
        test = {"epoch": max(self.history, key=lambda h: h[self.task.metric])["epoch"],
                **self.evaluate(model, "test")}
        if self.dist.is_main:
            atomic_write(self.out / "test.json", lambda p: p.write_text(json.dumps(test, indent=2) + "\n"))
            self._say(f"test: {self.task.format_test(test)} (best epoch {test['epoch']}'s weights, evaluated once; "
                      f"{self.out / 'test.json'})")
        return test

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
            self._say(self._banner())
            for note in [*self.task.notes, *self.notes]:
                self._say(note)
        if self.device.type == "cpu":
            build_all()  # a first run on this machine builds its kernels at once, not one at first use of each
        train_mode(self.model, self.recipe.freeze_backbone)
        test = None
        try:
            with StopFlag() as stop:
                while self.epoch < self.recipe.epochs:
                    if not self.step_in_epoch:
                        seed_epoch(self.cfg.seed, self.dist.rank, self.epoch)
                        self.train_loader.sampler.set_epoch(self.epoch)
                    stats = self._train_epoch(stop)
                    if stats is None:
                        self._save_checkpoint(best=False)
                        self._say(f"stopped in epoch {self.epoch + 1} after step {self.step_in_epoch}; "
                                  f"resume with --resume (saved {self.out / 'last.pt'})")
                        return {"stopped": True, "epoch": self.epoch, "out": str(self.out)}
                    eval_start = time.perf_counter()
                    if self.recipe.bn_recompute:
                        self._recompute_bn()
                    result = self.evaluate()
                    self._end_epoch(stats, result, stats["train_seconds"] + time.perf_counter() - eval_start)
            self._check_replicas()
            if self.task.has_test and self.history:
                test = self._final_test()
        finally:
            if self.writer is not None:
                self.writer.close()
            distributed.cleanup()
        metric = self.task.metric
        best = max(self.history, key=lambda h: h[metric]) if self.history else {}
        summary = {
            "epochs": self.epoch,
            f"best_{metric}": best.get(metric),
            "best_epoch": best.get("epoch"),
            f"final_{metric}": self.history[-1][metric] if self.history else None,
            "seconds": sum(h["seconds"] for h in self.history),
            "test": test,
            "out": str(self.out),
        }
        self._say(f"done: best {metric.replace('_', ' ')} {_pct(best.get(metric))} (epoch {summary['best_epoch']}), "
                  f"{summary['seconds'] / 60:.1f} min; checkpoints, metrics.jsonl, curves.png in {self.out}")
        return summary

    def _check_replicas(self) -> None:
        """DDP keeps every process's parameters equal; prove it at the end of the run.

        (BN running statistics are each process's own between steps; DDP broadcasts rank 0's
        before every forward, and rank 0's are the ones saved.)
        """
        if not self.dist.enabled:
            return
        flat = torch.cat([p.detach().double().flatten() for p in self.model.parameters()])
        mine = torch.stack([flat.sum(), (flat * torch.arange(len(flat), device=flat.device).double().sin()).sum()])
        gathered = [torch.zeros_like(mine) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(gathered, mine)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise TrainingError("DDP processes ended with different weights")
        self._say(f"weights identical on all {self.dist.world_size} processes ({len(flat):,} parameters)")

    def _end_epoch(self, stats: dict, result: dict[str, float], seconds: float) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        record = {
            "epoch": self.epoch,
            **{k: v for k, v in stats.items() if k not in ("train_images_per_s", "train_seconds")},
            **{f"val_{k}": v for k, v in result.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_images_per_s": stats["train_images_per_s"],
            "seconds": seconds,
        }
        self.history.append(record)
        improved = record[self.task.metric] > self.best
        self.best = max(self.best, record[self.task.metric])
        if self.dist.is_main:
            self._save_checkpoint(best=improved)
            atomic_write(self.out / "metrics.jsonl",
                         lambda p: p.write_text("".join(json.dumps(h) + "\n" for h in self.history)))
            plot_curves(self.history, self.out / "curves.png", metric=self.task.metric,
                        title=f"{self.cfg.model} x{self.recipe.width_mult:g} on {Path(self.cfg.data).name} "
                        f"({self.recipe.name})")
            for key, value in record.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, self.epoch)
            self.writer.flush()
            shown = "  ".join(f"{k.replace('_', ' ')} {_fmt(k, record[k])}" for k in self.task.shown)
            self._say(f"epoch {self.epoch}/{self.recipe.epochs}  {shown}  lr {record['lr']:.4g}  "
                      f"{record['train_images_per_s']:.0f} img/s  {record['seconds']:.0f} s"
                      + ("  *best*" if improved else ""))

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> dict:
        eval_model = self.ema.module if self.ema is not None else self.model
        return {
            "format": CHECKPOINT_FORMAT,
            "model": eval_model.state_dict(),
            "model_args": self.model_args.to_dict(),
            **self.task.checkpoint_fields(),
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best": self.best,
            "history": self.history,
            "train_state": {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "scaler": self.scaler.state_dict(),
                "partial": self.partial,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                },
            },
        }

    def _save_checkpoint(self, best: bool) -> None:
        if not self.dist.is_main:
            return
        ckpt = self._checkpoint()
        save_torch(ckpt, self.out / "last.pt")
        if best:
            save_torch(ckpt, self.out / "best.pt")

    def _load(self, path: Path) -> None:
        ckpt = read_train_checkpoint(path)
        classes = self.task.checkpoint_fields()["class_names"]
        if list(ckpt.get("class_names", classes)) != list(classes):
            raise TrainingError(f"--resume: {path} was trained on the classes {list(ckpt['class_names'])}, the data "
                                f"now has {list(classes)}; start a new --out (--weights {path} fine-tunes from it)")
        if ckpt["epoch"] >= self.recipe.epochs and not ckpt["step_in_epoch"]:
            raise TrainingError(f"--resume: {path} has trained {ckpt['epoch']} epochs already; give --epochs above "
                                "that to train more")
        state = ckpt["train_state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.best, self.history = ckpt["best"], list(ckpt["history"])
        self.partial = dict(state["partial"])
        if self.step_in_epoch:  # mid-epoch: continue with the random stream where it stopped
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step = f", step {self.step_in_epoch}" if self.step_in_epoch else ""
        self._say(f"resumed from {path}: epoch {self.epoch}{step}")

    def _start_weights(self) -> list[str]:
        """Load the weights the run starts from, if any; return what had to be adapted."""
        if self.cfg.weights:
            return load_pretrained(self.model, self.cfg.weights)
        if self.cfg.weights_backbone:
            return load_backbone_weights(self.model, self.cfg.weights_backbone)
        return []

    def _start(self) -> str:
        if self.epoch or self.step_in_epoch:
            return f"resumed at epoch {self.epoch + 1}"
        if self.cfg.weights:
            return f"from {self.cfg.weights}"
        return f"backbone from {self.cfg.weights_backbone}" if self.cfg.weights_backbone else "from scratch"

    # ------------------------------------------------------------------ output

    def _banner(self) -> str:
        r = self.recipe
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return (
            f"training {self.cfg.model} x{r.width_mult:g} ({n_params:,} params"
            f"{f', {n_train:,} trained' if n_train < n_params else ''}) "
            f"{self._start()} on {self.task.describe()}\n"
            f"recipe {r.name}: {self.task.describe_recipe(r)}; {self.dist.world_size} process(es), "
            f"lr {self.optimizer.param_groups[0]['initial_lr']:.4g} at the global batch"
            f"{', ' + str(self.amp_dtype).removeprefix('torch.') + ' autocast' if self.amp_dtype else ''}"
            f"{', channels_last' if r.channels_last else ''}; device {self.device}; output {self.out}"
        )

    def _say(self, text: str) -> None:
        if self.dist.is_main and not self.quiet:
            tqdm.write(text, file=sys.stderr)


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f} %" if value is not None else "-"


def _fmt(key: str, value: float) -> str:
    """Losses as numbers, accuracies and mAPs as percentages."""
    return f"{value:.4f}" if key.endswith("loss") else f"{100 * value:.2f} %"


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Train a model as ``cfg`` says; see ``Trainer``."""
    return Trainer(cfg, resume=resume, quiet=quiet).run()

