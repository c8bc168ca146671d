"""Continuous batching in front of the engine (BatchQueue); see its docstring for why not `@serve.batch`."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from toolace_r.serve.engine import Job, Outcome

log = logging.getLogger(__name__)


class BatchQueue:
    """Continuous batching in front of the engine: requests that arrive while a batch runs wait here, and all of them
    (up to `max_batch_size`) form the next batch the moment the engine is free. A request that finds the engine idle
    waits at most `wait_s` for company (requests sent together by one agent or by a burst of clients).

    Why not `@serve.batch`: it forms a batch every `batch_wait_timeout_s` whether or not the model is free, and the
    batches queue behind the running one; at 16 concurrent clients its batches averaged 6 requests while the model was
    busy (benchmarks/serve_load.py). Here a batch is formed when the model can take it, so it holds everything that
    arrived during the previous one.
    """

    def __init__(self, run: Callable[[list[Job]], Awaitable[list[Outcome | BaseException]]], max_batch_size: int,
                 wait_s: float):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_s = max(0.0, wait_s)
        self._pending: list[tuple[Job, asyncio.Future]] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0  # batches run, and the jobs they held (mean batch size = jobs / batches)
        self.jobs = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    async def submit(self, job: Job) -> Outcome | BaseException:
        """Queue one job and wait for its outcome (an exception object when the engine failed on it)."""
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._arrived = asyncio.Event()
        future = loop.create_future()
        self._pending.append((job, future))
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve_forever())
        return await future

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        just_ran = False  # the pending requests arrived while a batch ran: they go at once, no waiting for company
        while True:
            while not self._pending:
                just_ran = False
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + (0.0 if just_ran else self.wait_s)
            while len(self._pending) < self.max_batch_size and loop.time() < deadline:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
            batch = [(job, fut) for job, fut in self._pending[:self.max_batch_size] if not fut.done()]
            del self._pending[:self.max_batch_size]
            if not batch:  # every caller of this slice went away (client disconnects cancel their futures)
                continue
            self.batches += 1
            self.jobs += len(batch)
            try:
                outcomes = await self.run([job for job, _ in batch])
            except asyncio.CancelledError:  # the replica is shutting down: nobody of this batch may wait forever
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(RuntimeError("the replica's batch queue stopped"))
                raise
            except Exception as err:  # noqa: BLE001 - each waiting request gets a 500, the queue keeps serving
                log.exception("batch of %d failed outside the engine", len(batch))
                outcomes = [err] * len(batch)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)
            just_ran = True

