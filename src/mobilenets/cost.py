"""Exact cost accounting: mult-adds and parameters per layer and per layer type.

What is counted follows the papers (V1 Sec. 3.1 and Table 2): multiply-adds of convolutions and
fully connected layers. Batch norm is folded into the preceding convolution at inference time,
so it adds parameters here (they exist in the trained model) but no mult-adds; activations,
pooling, the SE gate multiply and residual additions are not multiply-adds and count 0.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import asdict, dataclass

import torch
from torch import nn

LAYER_TYPES = {
    "conv": "full conv",
    "depthwise": "depthwise",
    "pointwise": "pointwise",
    "fc": "fully connected",
    "other": "other",
}


@dataclass(frozen=True)
class LayerCost:
    """One leaf module: its place, kind, tensor shapes and cost for a batch of one."""

    name: str
    type: str
    module: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int


@dataclass(frozen=True)
class CostReport:
    input_size: tuple[int, int]
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def by_type(self) -> dict[str, dict[str, int]]:
        totals = {t: {"macs": 0, "params": 0} for t in LAYER_TYPES}
        for layer in self.layers:
            totals[layer.type]["macs"] += layer.macs
            totals[layer.type]["params"] += layer.params
        return totals

    def to_dict(self) -> dict:
        return {
            "input_size": list(self.input_size),
            "macs": self.macs,
            "params": self.params,
            "by_type": self.by_type,
            "layers": [asdict(layer) for layer in self.layers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_table(self) -> str:
        """The per-layer table followed by totals by type, as printed by ``mobilenets cost``."""
        head = f"{'layer':<28} {'type':<15} {'input':<16} {'output':<16} {'mult-adds':>13} {'params':>11}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            if r.macs or r.params:
                lines.append(
                    f"{r.name:<28} {LAYER_TYPES[r.type]:<15} {_dims(r.input_shape):<16} "
                    f"{_dims(r.output_shape):<16} {r.macs:>13,} {r.params:>11,}"
                )
        lines += ["", f"{'by type':<28} {'mult-adds':>13} {'%':>7} {'params':>11} {'%':>7}"]
        for kind, t in self.by_type.items():
            lines.append(
                f"{LAYER_TYPES[kind]:<28} {t['macs']:>13,} {_pct(t['macs'], self.macs):>7} "
                f"{t['params']:>11,} {_pct(t['params'], self.params):>7}"
            )
        lines.append(f"{'total':<28} {self.macs:>13,} {'':>7} {self.params:>11,}")
        return "\n".join(lines)


def layer_type(module: nn.Module) -> str:
    """Classify a leaf module as one of ``LAYER_TYPES``."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise"
        if module.kernel_size == (1, 1) and module.groups == 1:
            return "pointwise"
        return "conv"
    if isinstance(module, nn.Linear):
        return "fc"
    return "other"


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or linear layer for a batch of one."""
    per_sample = output.numel() // output.shape[0]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_sample * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_sample * module.in_features
    return 0


def profile(model: nn.Module, input_size: int | tuple[int, int] = 224) -> CostReport:
    """Count mult-adds and parameters of every leaf layer of ``model`` on one input image.

    ``input_size`` is the side of the square input (or ``(height, width)``): the resolution
    multiplier rho of V1 Sec. 3.4 is ``input_size / 224``. ``report.params`` always equals the
    sum of the model's parameter ``numel``.
    """
    size = tuple(input_size) if isinstance(input_size, (tuple, list)) else (input_size, input_size)
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and s > 0 for s in size):
        raise ValueError(f"input_size must be a positive side or (height, width), got {input_size!r}")
    in_chans = getattr(model, "in_chans", 3)
    rows: dict[str, LayerCost] = {}
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out = output[0] if isinstance(output, (list, tuple)) else output
            if not isinstance(out, torch.Tensor) or not isinstance(inputs[0], torch.Tensor):
                return  # a detector's resize or default boxes: not a layer
            rows[name] = LayerCost(
                name=name,
                type=layer_type(module),
                module=type(module).__name__,
                input_shape=tuple(inputs[0].shape[1:]),
                output_shape=tuple(out.shape[1:]),
                macs=layer_macs(module, out),
                params=sum(p.numel() for p in module.parameters()),
            )

        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in leaves.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, *size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    # Layers the forward pass did not reach still hold parameters: list them at zero cost.
    for name, m in leaves.items():
        if name not in rows and any(True for _ in m.parameters()):
            n = sum(p.numel() for p in m.parameters())
            rows[name] = LayerCost(name, layer_type(m), type(m).__name__, (), (), 0, n)
    ordered = tuple(rows[name] for name in leaves if name in rows)
    return CostReport(size, ordered)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f}" if whole else "-"
