"""Building a kernel of this package for this CPU, once, and loading it.

Kernels are compiled with ``-march=native``, so a build is kept per source, torch version and CPU
(its feature flags) under ``~/.cache/mobilenets/kernels``, and builds unused for 30 days are
removed; set ``MOBILENETS_KERNELS=0`` to use PyTorch's own ops instead. Without a compiler, or
when a build fails, the package says so once and falls back to PyTorch's ops: a kernel makes a
step faster and computes the same values (to rounding).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SWITCH = "MOBILENETS_KERNELS"
FLAGS = ("-O3", "-march=native", "-fopenmp") + (
    ("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ()  # AVX-512 where it is
)


# a build of a kernel unused this long is removed (a new torch, CPU or source leaves the old ones
# behind; on a home shared by several machines each keeps the builds it uses)
STALE_DAYS = 30


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mobilenets" / "kernels"


@functools.cache
def load(name: str) -> Any:
    """The operators of the kernel ``name`` (``kernels/NAME.cpp``, a ``torch.ops`` namespace), or None
    where it cannot be had."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    source = Path(__file__).with_name(f"{name}.cpp").read_text()
    key = "\n".join([source, *FLAGS, torch.__version__, _cpu_features()])
    module = f"mobilenets_{name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    library = cache_dir() / f"{module}.so"
    try:
        library.parent.mkdir(parents=True, exist_ok=True)
        with _locked(library.with_suffix(".lock")):  # one build at a time (torchrun, test workers)
            if library.exists():
                torch.ops.load_library(str(library))
            else:
                # one write, whole: two kernels may be built at once (build_all)
                sys.stderr.write(f"building the {name} kernel for this CPU (once, about 15 s)\n")
                _build(module, source, library)
        _prune(library)
        return getattr(torch.ops, module)
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as exc:  # no compiler, a failed
        # build, an unreadable cache: PyTorch's ops do the work (SIGTERM's exception still goes through)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"warning: the {name} kernel is not available ({reason}); using PyTorch's ops", file=sys.stderr)
        return None


def _build(module: str, source: str, library: Path) -> None:
    """Compiles into a scratch folder, loads the library from there (registering its operators), then
    moves it in place: a killed build leaves nothing."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime is found"
    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:  # the pip package's binary, when the venv is not on PATH
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory(dir=library.parent) as scratch:
        path = Path(scratch) / f"{module}.cpp"
        path.write_text(source)
        cpp_extension.load(module, [str(path)], extra_cflags=list(FLAGS), extra_ldflags=["-fopenmp"],
                           build_directory=scratch, is_python_module=False)
        os.replace(Path(scratch) / f"{module}.so", library)


def _prune(library: Path) -> None:
    """Marks ``library`` as used now and removes the other builds of its kernel (the same name
    before the hash) unused for ``STALE_DAYS``. Best effort: a read-only cache keeps everything."""
    kernel = library.stem.rpartition("_")[0]
    with contextlib.suppress(OSError):
        os.utime(library)
        cutoff = time.time() - STALE_DAYS * 86400
        for old in library.parent.glob("*.so"):
            if old.stem.rpartition("_")[0] == kernel and old != library and old.stat().st_mtime < cutoff:
                old.unlink()  # a process that has it loaded keeps its mapping
                old.with_suffix(".lock").unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path):
    """An advisory lock that the system drops when its holder dies (no stale lock after a kill)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, at worst two processes build the same file
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cpu_features() -> str:
    """The CPU's feature flags (a ``-march=native`` build runs only where they all are)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    return f"{platform.machine()} {platform.processor()}"
