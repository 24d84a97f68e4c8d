"""Mixed precision: which autocast dtype a run gets on which hardware."""

from __future__ import annotations

import contextlib
import sys

import torch

NO_NATIVE_BF16 = "this CPU has no native bf16 instructions (AVX-512 BF16 or AMX)"


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matrix instructions, not oneDNN's emulation on plain AVX-512."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence getattr
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def amp_dtype(device: torch.device, wanted: bool) -> torch.dtype | None:
    """The autocast dtype for a run: bf16 where the hardware has it, fp16 on older GPUs, else none."""
    if not wanted:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    print(f"warning: {NO_NATIVE_BF16}; training in float32", file=sys.stderr)
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
