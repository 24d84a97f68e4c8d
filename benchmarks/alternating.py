"""Timing contestants side by side on a noisy host: alternating rounds, medians; a kernel switched off."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from types import ModuleType


def medians(contestants: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Seconds per call of each contestant: one warm-up call each, then ``rounds`` rounds taking
    each in turn (so that a slow spell of the host hits all alike), the median of its rounds."""
    for fn in contestants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, fn in contestants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def without_kernel(kernels: ModuleType, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run with one of the package's kernel modules (``mobilenets.kernels.*``) switched off,
    so that PyTorch's ops do its work."""
    def run() -> None:
        kernel = kernels.kernel
        kernels.kernel = lambda: None
        try:
            fn()
        finally:
            kernels.kernel = kernel
    return run
