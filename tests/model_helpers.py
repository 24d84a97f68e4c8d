"""Models with non-trivial batch-norm statistics, so that a misplaced tensor or a wrong fold shows."""

from __future__ import annotations

import torch


def randomize_batchnorm(model: torch.nn.Module, scale: float = 0.2, seed: int | None = None) -> torch.nn.Module:
    """Every BN gets random statistics and affine terms; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * scale)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * scale)
            m.num_batches_tracked.fill_(7)
    return model.eval()
