"""Models for tests: non-trivial batch-norm statistics (so that a misplaced tensor or a wrong fold
shows), and the gradients of one training step."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mobilenets import create_model


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


def training_step_grads(name: str, dtype: torch.dtype) -> torch.Tensor:
    """All gradients of one training step of a whole model (width 0.5, batch 4, 64 px, channels-last)
    from the same seed, in ``dtype`` (bf16: under autocast, as training runs it)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    model = create_model(name, width_mult=0.5, num_classes=4).to(memory_format=torch.channels_last).train()
    if dtype == torch.float64:
        model, x = model.double(), x.double()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        F.cross_entropy(model(x), torch.arange(4)).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])
