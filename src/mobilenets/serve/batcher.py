"""Dynamic batching: concurrent requests gathered into one batch and run once, off the event loop.

The policy is Triton's dynamic batcher: a batch is formed from the requests waiting, in arrival
order, up to ``max_batch``; when fewer are waiting, the oldest may be held up to ``max_wait``
seconds for more to arrive (``max_wait=0``: never held). Batches run one at a time on a single
inference thread (the runtime's own threads parallelise each batch), so while one batch runs the
next one fills up by itself. At most ``max_queue`` requests wait; more are turned away with 503
(TorchServe's ``job_queue_size``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .errors import ServeError


@dataclass(frozen=True)
class BatchInfo:
    size: int  # requests in the batch that answered this one
    model_s: float  # time to run the batch (stack, normalise, forward, postprocess)
    queue_s: float  # time this request waited for its batch to start


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    arrived: float


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        max_batch: int = 16,
        max_wait: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1, max_wait at least 0")
        self.run_batch, self.max_batch, self.max_wait, self.max_queue = run_batch, max_batch, max_wait, max_queue
        self.on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def submit(self, item: Any) -> tuple[Any, BatchInfo]:
        """Queue ``item``; its result and the batch it ran in, once that batch has run."""
        if self._task is None or self._closing:
            raise ServeError(503, "shutting_down", "the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise ServeError(503, "overloaded", f"{self.max_queue} requests are already waiting; try again shortly")
        pending = _Pending(item, asyncio.get_running_loop().create_future(), time.perf_counter())
        self._pending.append(pending)
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:  # the client went away: its place in the queue is freed at once
            with contextlib.suppress(ValueError):
                self._pending.remove(pending)
            raise

    async def start(self, warm_up: Callable[[], Any] | None = None) -> None:
        """Start the inference thread (running ``warm_up`` on it first) and the batching loop."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        if warm_up is not None:  # the thread's first call pays for its set-up, not the first request
            await asyncio.get_running_loop().run_in_executor(self._executor, warm_up)
        self._task = asyncio.create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Run what is still waiting, then stop (new requests are refused from now on)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather(loop)
            n = min(self.max_batch, len(self._pending))
            # a request cancelled whose removal has not run yet is skipped
            batch = [p for p in (self._pending.popleft() for _ in range(n)) if not p.future.done()]
            if batch:
                await self._run(loop, batch)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold the oldest request up to ``max_wait`` while the batch is not full."""
        deadline = self._pending[0].arrived + self.max_wait
        while len(self._pending) < self.max_batch and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        started = time.perf_counter()

        def timed() -> tuple[Sequence[Any], float]:
            t0 = time.perf_counter()
            results = self.run_batch([p.item for p in batch])
            return results, time.perf_counter() - t0

        try:
            results, seconds = await loop.run_in_executor(self._executor, timed)
        except Exception as e:  # the model failed: every request of the batch gets the error, serving goes on
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), seconds)
        for p, result in zip(batch, results):
            if not p.future.done():
                p.future.set_result((result, BatchInfo(len(batch), seconds, started - p.arrived)))
