"""Training curves and confusion matrices as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .files import atomic_path  # noqa: E402


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "", metric: str = "val_acc") -> None:
    """The validation metric (accuracy or mAP, with the training accuracy where there is one) and
    the losses against epoch, from ``metrics.jsonl`` records."""
    epochs = [h["epoch"] for h in history]
    name = metric.removeprefix("val_")
    label = {"acc": "accuracy", "map": "mAP@[.5:.95]"}.get(name, name)
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for split, style in (("train", "-o"), ("val", "-s")):
        if f"{split}_{name}" in history[0]:
            acc_ax.plot(epochs, [100 * h[f"{split}_{name}"] for h in history], style, ms=3, label=split)
        if f"{split}_loss" in history[0]:
            loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], style, ms=3, label=split)
    best = max(history, key=lambda h: h[metric])
    acc_ax.annotate(f"best val {100 * best[metric]:.2f} %", (best["epoch"], 100 * best[metric]),
                    textcoords="offset points", xytext=(-60, -25), arrowprops={"arrowstyle": "->"})
    acc_ax.set(xlabel="epoch", ylabel=f"{label} (%)", title=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(
    confusion: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """Row-normalised confusion matrix with counts, true class on the rows."""
    n = len(class_names)
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                count = int(confusion[i, j])
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)



def plot_sweep(rows: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Measured latency against mult-adds and against parameters, log axes, one series per backend.

    The measured counterpart of V1 Figures 4 and 5 (accuracy against mult-adds and against
    parameters for the 16 width x resolution models): each marker is one combination, labelled
    ``width/input``; thin lines join the combinations of equal width, so each line shows what
    lowering the resolution buys at that width, and the lines side by side show where a thinner
    model beats a lower resolution at equal mult-adds.
    """
    from matplotlib.ticker import FuncFormatter

    runs = [r for r in rows if r.get("available") and r.get("median_ms")]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    markers = "osD^v<>Px*"
    for i, backend in enumerate(dict.fromkeys(r["backend"] for r in runs)):
        mine = [r for r in runs if r["backend"] == backend]
        for ax, key in zip(axes, ("macs", "params")):
            xs, ys = [r[key] / 1e6 for r in mine], [r["median_ms"] for r in mine]
            points = ax.scatter(xs, ys, marker=markers[i % len(markers)], label=backend, zorder=3)
            color = points.get_facecolor()[0]
            for width in dict.fromkeys(r["width_mult"] for r in mine):
                line = sorted((r for r in mine if r["width_mult"] == width), key=lambda r: r[key])
                ax.plot([r[key] / 1e6 for r in line], [r["median_ms"] for r in line], "-", lw=0.8, alpha=0.5,
                        color=color)
            for r, x, y in zip(mine, xs, ys):
                ax.annotate(f"{r['width_mult']:g}/{r['input_size']}", (x, y), textcoords="offset points",
                            xytext=(4, 3), fontsize=6.5)
    batch = runs[0]["batch_size"] if runs else 1
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, what in zip(axes, ("mult-adds (millions)", "parameters (millions)")):
        ax.set(xscale="log", yscale="log", xlabel=what, ylabel=f"latency per batch of {batch} (ms, median)")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.grid(alpha=0.3, which="both")
        ax.legend(title="backend (label: width/input)")
    axes[0].set_title("latency vs mult-adds (cf. V1 Fig. 4)")
    axes[1].set_title("latency vs parameters (cf. V1 Fig. 5)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
