"""Accuracy, loss, per-class accuracy and the confusion matrix of a classifier on a dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .distributed import Dist

Forward = Callable[[Tensor], Tensor]  # float input batch -> logits


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    confusion: Tensor  # [true class, predicted class] counts

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    def to_dict(self, class_names: list[str]) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "count": self.count,
            "per_class": dict(zip(class_names, self.per_class)),
            "confusion": self.confusion.tolist(),
        }

    def format(self, class_names: list[str]) -> str:
        k = min(5, len(class_names))
        lines = [f"top-1 {100 * self.top1:.2f} %   top-{k} {100 * self.top5:.2f} %   loss {self.loss:.4f}   "
                 f"({self.count} images)", "per-class accuracy:"]
        width = max(len(n) for n in class_names)
        lines += [f"  {name:<{width}}  {100 * acc:6.2f} %" for name, acc in zip(class_names, self.per_class)]
        return "\n".join(lines)


@torch.no_grad()
def evaluate(
    forward: Forward,
    batches: Iterable[tuple[Tensor, Tensor]],
    prepare: Callable[[Tensor], Tensor],
    num_classes: int,
    dist: Dist | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run ``forward`` over ``(uint8 images, labels)`` batches; ``prepare`` makes model input.

    Under DDP each process sees its own shard; sums are reduced so every process gets the
    metrics of the whole set.
    """
    dist = dist or Dist()
    device = dist.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    loss_sum = top5 = 0.0
    k = min(5, num_classes)
    for images, labels in batches:
        if len(labels) == 0:
            continue
        labels = labels.to(device)
        logits = forward(prepare(images.to(device))).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top5 += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
        confusion.index_put_((labels, logits.argmax(dim=1)), torch.ones_like(labels, dtype=confusion.dtype),
                             accumulate=True)
        if progress:
            progress(len(labels))
    loss_sum, top5 = dist.sum([loss_sum, top5])
    dist.all_reduce_(confusion)
    count = int(confusion.sum().item())
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return EvalResult(
        loss=loss_sum / count,
        top1=confusion.diag().sum().item() / count,
        top5=top5 / count,
        count=count,
        confusion=confusion.cpu().long(),
    )
