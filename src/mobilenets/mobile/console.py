"""Keep the converters' and runtimes' chatter (progress bars, C++ INFO logs) off the command's output."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from types import ModuleType

from ..runtimes import require


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send everything printed inside the block to a temporary file instead of the terminal.

    Both levels are redirected: Python's ``sys.stdout``/``sys.stderr`` (tqdm bars, logging) and the
    process's file descriptors 1 and 2, which native code (ExecuTorch, LiteRT, XNNPACK) writes to
    directly; Python warnings are ignored. If the block fails, what it printed is replayed on stderr when
    ``MOBILENETS_DEBUG`` is set; otherwise the caller's one-line error says what went wrong.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation and "experimental API" notices meant for developers
                yield
        except BaseException:
            if os.environ.get("MOBILENETS_DEBUG"):
                sink.seek(0)
                os.write(saved[2], sink.read() + text.getvalue().encode())
            raise
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type's name): what a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def quiet_import(module: str) -> ModuleType:
    """``runtimes.require`` without the notices some packages print on import."""
    with quiet():
        return require(module)
