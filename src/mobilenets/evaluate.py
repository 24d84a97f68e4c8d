"""Accuracy, loss, per-class accuracy and the confusion matrix of a classifier on a dataset."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from .distributed import Dist
from .preprocess import Preprocess

Forward = Callable[[Tensor], Tensor]  # float input batch -> logits


@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    count: int
    confusion: Tensor  # [true class, predicted class] counts

    @property
    def per_class(self) -> list[float | None]:
        """Each class's top-1; ``None`` for a class without images in the set."""
        totals = self.confusion.sum(dim=1)
        return [None if n == 0 else acc for n, acc in zip(totals.tolist(), (self.confusion.diag() / totals).tolist())]

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
        lines += [f"  {name:<{width}}  {100 * acc:6.2f} %" if acc is not None else f"  {name:<{width}}     n/a"
                  for name, acc in zip(class_names, self.per_class)]
        return "\n".join(lines)


TTA_VIEWS = ("flip", "shift", "flip-shift")


def _check_views(views: str) -> None:
    if views not in TTA_VIEWS:
        raise ValueError(f"unknown TTA views {views!r}; choose from {', '.join(TTA_VIEWS)}")


def tta_views(x: Tensor, views: str) -> list[Tensor]:
    """The views of a model-input batch that test-time augmentation averages.

    ``flip``: the image and its mirror image (only for data where a mirror image keeps its class:
    clothes, photos; not digits or text). ``shift``: the image and four copies moved by about 3 %
    of its side (2 px at 72) up, down, left and right, the edges repeated. ``flip-shift``: both,
    10 views. On Fashion-MNIST the shifts added up to 0.3 point over the mirror alone for some
    runs and nothing for others (docs/results.md section 1): choose the views on validation.
    """
    _check_views(views)
    images = [x, x.flip(-1)] if "flip" in views else [x]
    if "shift" not in views:
        return images
    s = max(1, round(x.shape[-1] / 32))
    h, w = x.shape[-2:]
    moves = ((0, 0), (-s, 0), (s, 0), (0, -s), (0, s))
    padded = [F.pad(image, (s, s, s, s), mode="replicate") for image in images]
    return [p[..., s + dy:s + dy + h, s + dx:s + dx + w] for p in padded for dy, dx in moves]


def with_tta(forward: Forward, views: str = "flip") -> Forward:
    """Test-time augmentation: the log of the mean probability over ``tta_views(x, views)``.

    Log-probabilities are logits, so accuracy and cross-entropy need nothing else.
    """
    _check_views(views)  # here, not at the first batch

    def averaged(x: Tensor) -> Tensor:
        outputs = [forward(view).float().log_softmax(1) for view in tta_views(x, views)]
        return torch.logsumexp(torch.stack(outputs), dim=0) - math.log(len(outputs))

    return averaged


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


def evaluate_data(
    forward: Forward,
    data: str,
    preprocess: Preprocess,
    class_names: list[str],
    *,
    val_split: float | None = None,
    batch_size: int = 256,
    workers: int = 0,
    tta: str | None = None,
    split: str | None = None,
    seed: int = 0,
    device: torch.device | None = None,
) -> tuple[str, EvalResult]:
    """A finished model on ``split`` (default: test where there is one, else validation), read
    with the model's own preprocessing, with test-time augmentation ``tta`` (see ``tta_views``);
    returns the split's name and the result. ``seed`` and ``val_split`` carve the validation
    split as the training run did."""
    from torch.utils.data import DataLoader

    from .data import collate_skipping_none, load_data

    bundle = load_data(data, val_split=val_split, seed=seed, in_chans=preprocess.channels)
    if bundle.class_names != class_names:
        raise ValueError(f"the model was trained on classes {class_names}, {data} has {bundle.class_names}")
    bundle.set_transforms(None, preprocess.image_transform())
    split, dataset = bundle.eval_split(split)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_none)
    device = device or torch.device("cpu")
    result = evaluate(with_tta(forward, tta) if tta else forward, loader, preprocess.batch_transform().to(device),
                      len(class_names), Dist(device=device))
    return split, result
