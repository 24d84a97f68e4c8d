"""Atomic file writes and checked loads: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The rename is atomic on POSIX, so a reader (or a run killed mid-write) sees either the old
    file or the complete new one. On failure the temporary file is removed.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise PermissionError(f"cannot write to {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated file behind."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for missing and corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # arbitrary bytes fail the unpickler in many ways (a KeyError for "junk")
        raise ValueError(_load_error(path, e)) from None


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file (the format timm's and the Hugging Face Hub's weights
    come in): its name says so, or it starts as one does, an 8-byte header length and ``{``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 27


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors on the CPU, with a one-line error for a missing or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from None


def _load_error(path: Path, e: Exception) -> str:
    """One line for a file ``torch.load(weights_only=True)`` refused. torch's own text for the
    refusal is a paragraph of advice (with terminal colour codes) around the one fact that
    matters, which follows ``WeightsUnpickler error:``."""
    text = str(e).strip()
    refused = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if refused:
        fact = refused.group(1).strip()
        pickled = re.match(r"Unsupported global: GLOBAL (\S+)", fact)
        if pickled:  # torch.save(model): the file needs that class's code to load, and would run it
            return (f"{path} holds a pickled Python object ({pickled.group(1)}), not tensors: save "
                    f"model.state_dict() instead (checkpoints are read with weights_only=True, so no code in "
                    f"them runs)")
        return f"{path} is not a readable {_kind(path)} ({fact})"
    reason = text.splitlines()[0] if text else type(e).__name__
    if text and not isinstance(e, (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError)):
        reason = f"{type(e).__name__}: {reason}"  # the type says what the bare text does not
    return f"{path} is not a readable {_kind(path)} ({reason})"


def _kind(path: Path) -> str:
    """What a file that failed to load was meant to be, by its name (.ts and .pt2 are exports)."""
    return {".ts": "TorchScript file or PyTorch checkpoint", ".pt2": "torch.export archive (.pt2)"}.get(
        path.suffix.lower(), "PyTorch checkpoint")


def replace_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move the folder ``src`` onto ``dst`` (a format that is a folder, e.g. a Core ML ``.mlpackage``).

    A folder cannot replace another in one atomic rename, so an old ``dst`` is first renamed aside
    and removed only after the new one is in place: a reader sees the old folder or the complete
    new one (or, for an instant, none), never a partial one under the final name.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old)
