"""Batch-norm statistics recomputed for the weights being evaluated ("precise BN").

During training each BN layer keeps a running average of its batch statistics with momentum 0.1,
so its statistics lag the weights: they mix the last ~20 steps' weights. In a long run the weights
barely move over 20 steps; in a short one (a small folder: 100 steps or fewer) they move a lot, and
the lagging statistics can make the evaluated model answer one class for every image while the same
weights with the true statistics of their own activations classify well. Recomputing the
statistics as a plain average over a few training batches fixes that (Wu and Johnson 2021,
"Rethinking 'Batch' in BatchNorm", Sec. 3; detectron2's ``PreciseBN``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Set the running mean and variance of ``model``'s BN layers that are in training mode to the
    average of their batch statistics over ``batches`` (model inputs); layers in eval mode (a frozen
    backbone's) keep theirs. Returns the number of batches used."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone()) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every batch counts the same
    used = 0
    try:
        for x in batches:
            model(x)
            used += 1
    finally:
        for m, (momentum, mean, var) in zip(layers, saved):
            m.momentum = momentum
            if not used:  # nothing seen: the old statistics are better than none
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
    return used


def bn_buffers(model: nn.Module) -> list[Tensor]:
    """The running statistics of ``model``'s BN layers (to be averaged across processes)."""
    return [t for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats
            for t in (m.running_mean, m.running_var)]
