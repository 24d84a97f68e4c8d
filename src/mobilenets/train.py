"""Training: the loop, EMA, mixed precision, DDP, checkpoints that survive a kill, metrics.

Every epoch ends with ``last.pt`` (and ``best.pt`` when validation accuracy improves),
``metrics.jsonl``, TensorBoard events and ``curves.png``, each written atomically by rank 0.
Randomness is re-seeded from (seed, rank, epoch) at every epoch start, so a run resumed at an
epoch boundary repeats the uninterrupted run exactly (on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

from . import distributed
from .adapt import describe, resolve
from .data import BatchAugment, DataBundle, collate_skipping_none, folder_train_transform, load_data
from .evaluate import EvalResult, evaluate
from .files import atomic_write, save_torch
from .finetune import freeze_backbone, train_mode
from .optim import EpochSchedule, build_optimizer
from .plots import plot_curves
from .precision import amp_dtype, autocast
from .registry import create_model
from .run_config import CHECKPOINT_FORMAT, TrainConfig, TrainingError, read_train_checkpoint
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
    """One training run. ``run()`` trains from scratch or from ``last.pt`` and returns the summary."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> None:
        self.quiet = quiet
        self.out = Path(cfg.out)
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        if not resume and (self.out / "last.pt").exists():
            raise TrainingError(f"{self.out} already holds a run (last.pt): pass --resume to continue it, "
                                "or choose another --out")
        if cfg.recipe.freeze_backbone and not cfg.weights:
            raise TrainingError("--freeze-backbone needs --weights FILE: a backbone trained from scratch would "
                                "stay at its random initialisation")
        self.data: DataBundle = load_data(cfg.data, val_split=cfg.val_split, seed=cfg.seed, in_chans=cfg.in_chans,
                                          subset=cfg.subset)
        # the default recipe decides what it left AUTO from the data; a resumed run is already resolved
        self.cfg = dataclasses.replace(cfg, recipe=resolve(cfg.recipe, self.data.facts(), self.dist.world_size))
        self.recipe = r = self.cfg.recipe
        self.preprocess = self.data.preprocess(r.input_size, r.eval_crop)
        self.data.set_transforms(folder_train_transform(r.input_size, r.min_crop, r.hflip, r.erase),
                                 self.preprocess.image_transform())
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = create_model(cfg.model, width_mult=r.width_mult, num_classes=len(self.data.class_names),
                                  in_chans=self.data.in_chans, dropout=r.dropout)
        self.notes = load_pretrained(self.model, cfg.weights) if cfg.weights and not resume else []
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
        self.epoch, self.step_in_epoch, self.best_acc = 0, 0, -1.0
        self.partial: dict[str, float] = {}
        global_batch = self.recipe.batch_size * self.dist.world_size
        self.optimizer = build_optimizer(self.model, self.recipe, self.recipe.lr * global_batch / self.recipe.lr_batch)
        self.train_loader = self._train_loader()
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = EpochSchedule(self.optimizer, self.recipe, self.steps_per_epoch)
        self.amp_dtype = amp_dtype(self.device, self.recipe.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.prepare = self.preprocess.batch_transform(r.channels_last).to(self.device)
        self.augment = BatchAugment(r.pad, r.hflip, r.erase) if self.data.in_memory else None
        if resume:
            self._load(self.out / "last.pt")
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.recipe.compile:
            self.net = torch.compile(self.net)
        self.writer = None

    # ------------------------------------------------------------------ data

    def _train_loader(self, skip_batches: int = 0) -> DataLoader:
        n = len(self.data.train) // self.dist.world_size
        batch = min(self.recipe.batch_size, n)
        if batch < 2:
            raise TrainingError(f"the training set has {len(self.data.train)} images: too few to train on")
        sampler = DistributedSampler(
            self.data.train, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=self.cfg.seed,
            drop_last=True,
        )
        sampler.set_epoch(self.epoch)
        if skip_batches:  # resume in the middle of an epoch: the same order, minus what was done
            sampler = list(sampler)[skip_batches * batch :]
        return DataLoader(
            self.data.train, batch_size=batch, sampler=sampler, drop_last=True, num_workers=self.cfg.workers,
            collate_fn=collate_skipping_none, persistent_workers=False, pin_memory=self.device.type == "cuda",
        )


    # ------------------------------------------------------------------ steps

    def _step(self, images: Tensor, labels: Tensor) -> tuple[float, int, bool]:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.augment is not None:
            images = self.augment(images)
        x = self.prepare(images)
        with autocast(self.device, self.amp_dtype):
            logits = self.net(x)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.recipe.label_smoothing)
        # report plain cross-entropy, comparable with the validation loss, whatever the smoothing
        value = F.cross_entropy(logits.detach().float(), labels).item() if self.recipe.label_smoothing else loss.item()
        (diverged,) = self.dist.any(not math.isfinite(value))
        if diverged:
            return value, 0, True
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        correct = (logits.argmax(dim=1) == labels).sum().item()
        return value, correct, False

    def _train_epoch(self, stop: StopFlag) -> dict[str, float] | None:
        """Train one epoch (or its rest); ``None`` when stopped by a signal."""
        sums = self.partial or {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
        images_per_step = self.train_loader.batch_size * self.dist.world_size
        bar = tqdm(
            total=self.steps_per_epoch * images_per_step, initial=self.step_in_epoch * images_per_step,
            desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}", unit="img", unit_scale=True, leave=False,
            disable=None if self.dist.is_main and not self.quiet else True, dynamic_ncols=True,
        )
        start = time.perf_counter() - sums["seconds"]
        loader = self.train_loader if not self.step_in_epoch else self._train_loader(self.step_in_epoch)
        with bar:
            for images, labels in loader:
                if len(labels) < 2:
                    continue
                loss, correct, diverged = self._step(images, labels)
                if diverged:
                    raise TrainingError(
                        f"loss became {loss} at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} "
                        f"(lr {self.optimizer.param_groups[0]['lr']:.4g}); stopped. The last good checkpoint is "
                        f"{self.out / 'last.pt'}" + (f" (epoch {self.epoch})" if self.epoch else " (none yet)")
                    )
                n = len(labels)
                sums["loss"] += loss * n
                sums["correct"] += correct
                sums["count"] += n
                self.step_in_epoch += 1
                seconds = time.perf_counter() - start
                bar.update(n * self.dist.world_size)
                bar.set_postfix(loss=f"{sums['loss'] / sums['count']:.3f}",
                                acc=f"{100 * sums['correct'] / sums['count']:.1f}%",
                                lr=f"{self.optimizer.param_groups[0]['lr']:.3g}", refresh=False)
                (stopping,) = self.dist.any(stop.raised)
                sums["seconds"] = seconds
                if stopping:
                    self.partial = sums
                    return None
        total = self.dist.sum([sums["loss"], sums["correct"], sums["count"]])
        self.partial = {}
        return {
            "train_loss": total[0] / total[2],
            "train_acc": total[1] / total[2],
            "train_images_per_s": total[2] / sums["seconds"],
            "train_seconds": sums["seconds"],
        }

    def evaluate(self, model: nn.Module | None = None, dataset: Dataset | None = None) -> EvalResult:
        """Accuracy of the evaluated weights (EMA, else the model) on the validation set."""
        model = model or (self.ema.module if self.ema is not None else self.model)
        shard = Subset(dataset or self.data.val, range(self.dist.rank, len(dataset or self.data.val),
                                                        self.dist.world_size))
        batches = DataLoader(shard, batch_size=max(self.recipe.batch_size, 256), num_workers=self.cfg.workers,
                             collate_fn=collate_skipping_none)
        model.eval()
        try:
            return evaluate(model, batches, self.prepare, len(self.data.class_names), self.dist)
        finally:
            train_mode(model, self.recipe.freeze_backbone)

    def _final_test(self) -> dict:
        """The best epoch's weights on the test set, once, at the end (the validation set chose them)."""
        self.dist.barrier()  # rank 0 has written best.pt
        model = create_model(**self.model_args.to_dict())
        model.load_state_dict(read_train_checkpoint(self.out / "best.pt")["model"])
        model.to(self.device, memory_format=self.memory_format)
        result = self.evaluate(model, self.data.test)
        test = {"top1": result.top1, "top5": result.top5, "loss": result.loss, "count": result.count,
                "epoch": max(self.history, key=lambda h: h["val_acc"])["epoch"]}
        if self.dist.is_main:
            atomic_write(self.out / "test.json", lambda p: p.write_text(json.dumps(test, indent=2) + "\n"))
            self._say(f"test: top-1 {100 * result.top1:.2f} %, top-5 {100 * result.top5:.2f} % on {result.count:,} "
                      f"images (best epoch {test['epoch']}'s weights, evaluated once; {self.out / 'test.json'})")
        return test

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"))
            self._say(self._banner())
            for note in self.notes:
                self._say(note)
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
                    result = self.evaluate()
                    self._end_epoch(stats, result, stats["train_seconds"] + time.perf_counter() - eval_start)
            self._check_replicas()
            if self.data.test is not None and self.history:
                test = self._final_test()
        finally:
            if self.writer is not None:
                self.writer.close()
            distributed.cleanup()
        best = max(self.history, key=lambda h: h["val_acc"]) if self.history else {}
        summary = {
            "epochs": self.epoch,
            "best_val_acc": best.get("val_acc"),
            "best_epoch": best.get("epoch"),
            "final_val_acc": self.history[-1]["val_acc"] if self.history else None,
            "seconds": sum(h["seconds"] for h in self.history),
            "test": test,
            "out": str(self.out),
        }
        self._say(f"done: best val acc {100 * summary['best_val_acc']:.2f} % (epoch {summary['best_epoch']}), "
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

    def _end_epoch(self, stats: dict, result: EvalResult, seconds: float) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        record = {
            "epoch": self.epoch,
            **{k: stats[k] for k in ("train_loss", "train_acc")},
            "val_loss": result.loss,
            "val_acc": result.top1,
            "val_top5": result.top5,
            "val_images": result.count,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_images_per_s": stats["train_images_per_s"],
            "seconds": seconds,
        }
        self.history.append(record)
        improved = result.top1 > self.best_acc
        self.best_acc = max(self.best_acc, result.top1)
        if self.dist.is_main:
            self._save_checkpoint(best=improved)
            atomic_write(self.out / "metrics.jsonl",
                         lambda p: p.write_text("".join(json.dumps(h) + "\n" for h in self.history)))
            plot_curves(self.history, self.out / "curves.png",
                        title=f"{self.cfg.model} x{self.recipe.width_mult:g} on {self.data.name} ({self.recipe.name})")
            for key, value in record.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, self.epoch)
            self.writer.flush()
            self._say(
                f"epoch {self.epoch}/{self.recipe.epochs}  train loss {record['train_loss']:.4f} "
                f"acc {100 * record['train_acc']:.2f} %  val loss {record['val_loss']:.4f} "
                f"acc {100 * record['val_acc']:.2f} %  lr {record['lr']:.4g}  "
                f"{record['train_images_per_s']:.0f} img/s  {record['seconds']:.0f} s"
                + ("  *best*" if improved else "")
            )

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> dict:
        eval_model = self.ema.module if self.ema is not None else self.model
        return {
            "format": CHECKPOINT_FORMAT,
            "model": eval_model.state_dict(),
            "model_args": self.model_args.to_dict(),
            "class_names": self.data.class_names,
            "preprocess": self.preprocess.to_dict(),
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_val_acc": self.best_acc,
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
        state = ckpt["train_state"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = ckpt["epoch"], ckpt["step_in_epoch"]
        self.best_acc, self.history = ckpt["best_val_acc"], list(ckpt["history"])
        self.partial = dict(state["partial"])
        if self.step_in_epoch:  # mid-epoch: continue with the random stream where it stopped
            torch.set_rng_state(state["rng"]["torch"])
            if state["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step = f", step {self.step_in_epoch}" if self.step_in_epoch else ""
        self._say(f"resumed from {path}: epoch {self.epoch}{step}")

    # ------------------------------------------------------------------ output

    def _banner(self) -> str:
        r = self.recipe
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        test = f" / {len(self.data.test):,} test" if self.data.test is not None else ""
        return (
            f"training {self.cfg.model} x{r.width_mult:g} ({n_params:,} params"
            f"{f', {n_train:,} trained' if n_train < n_params else ''}) "
            f"{'from ' + self.cfg.weights if self.cfg.weights else 'from scratch'} "
            f"on {self.data.name}: {len(self.data.train):,} train / {len(self.data.val):,} val{test} images, "
            f"{len(self.data.class_names)} classes, {self.data.in_chans} channel(s)\n"
            f"recipe {r.name}: {describe(r, self.data.in_memory)}; {self.dist.world_size} process(es), "
            f"lr {self.optimizer.param_groups[0]['initial_lr']:.4g} at the global batch"
            f"{', ' + str(self.amp_dtype).removeprefix('torch.') + ' autocast' if self.amp_dtype else ''}"
            f"{', channels_last' if r.channels_last else ''}; device {self.device}; output {self.out}"
        )

    def _say(self, text: str) -> None:
        if self.dist.is_main and not self.quiet:
            tqdm.write(text, file=sys.stderr)


def train(cfg: TrainConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Train a model as ``cfg`` says; see ``Trainer``."""
    return Trainer(cfg, resume=resume, quiet=quiet).run()

