"""Dynamic batching in rows, with each batch formed when the scorer is free to run it.

A scorer replica answers requests of different users together: one batch of at most `max_rows` (user, item)
rows, jobs taken first come, first served. The batch is cut at the moment the previous one has finished, so
it holds everything that queued up meanwhile (up to `max_rows`). Ray Serve's `@serve.batch` cuts the next
batch `batch_wait_timeout_s` after its first request arrives, while the current batch still runs; under load
that makes batches of whatever arrived in those milliseconds (measured on one CPU replica with 5-row requests
and `max_rows` 20: 8.3 rows per forward chunk of at most 10), each bucketed by prompt length over fewer rows.

An idle scorer still waits up to `wait_s` after a job arrives for others to join it (the same knob as
`batch_wait_timeout_s`), unless `max_rows` rows are already there. One batch runs at a time. A job whose
caller has gone (its awaiting task cancelled) is dropped before its batch runs: nobody waits for its rows.
No Ray or Serve import: serve/app.py's scorer replica drives it; tests drive it with plain asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def _too_big(rows: int, max_rows: int) -> ValueError:
    return ValueError(f"a job of {rows} rows does not fit a batch of at most {max_rows} rows")


@dataclass
class _Pending(Generic[J, R]):
    job: J
    rows: int
    arrived: float
    future: asyncio.Future


class RowBatcher(Generic[J, R]):
    """`await submit(job)` → its result from `run(batch)`, the batch formed when the previous one finished.

    run: called with one batch (a list of jobs, FIFO), returns one result per job in order; an exception
    fails every job of that batch (the batcher goes on with the next). rows_of: a job's size in rows."""

    def __init__(
        self,
        run: Callable[[list[J]], Awaitable[Sequence[R]]],
        rows_of: Callable[[J], int],
        max_rows: int,
        wait_s: float,
    ) -> None:
        self._run = run
        self._rows_of = rows_of
        self.configure(max_rows, wait_s)
        self._queue: deque[_Pending[J, R]] = deque()
        self._queued_rows = 0
        self._arrival = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    def configure(self, max_rows: int, wait_s: float) -> None:
        """New bounds, from the next batch on."""
        if int(max_rows) < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if float(wait_s) < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.max_rows, self.wait_s = int(max_rows), float(wait_s)

    @property
    def queued_rows(self) -> int:
        """Rows submitted and not yet in a running batch."""
        return self._queued_rows

    async def submit(self, job: J) -> R:
        rows = int(self._rows_of(job))
        if rows > self.max_rows:
            raise _too_big(rows, self.max_rows)
        loop = asyncio.get_running_loop()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = loop.create_task(self._batches())
        pending = _Pending(job, rows, time.monotonic(), loop.create_future())
        self._queue.append(pending)
        self._queued_rows += rows
        self._arrival.set()
        return await pending.future

    async def _batches(self) -> None:
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            await self._fill()
            batch = self._take()
            if batch:
                await self._run_batch(batch)

    async def _fill(self) -> None:
        """Wait until `max_rows` rows are queued or the oldest job has waited `wait_s`."""
        while self._queued_rows < self.max_rows:
            left = self._queue[0].arrived + self.wait_s - time.monotonic()
            if left <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), left)
            except TimeoutError:
                return

    def _take(self) -> list[_Pending[J, R]]:
        """Jobs first come, first served, until the next one would pass `max_rows` (it leads the next batch);
        jobs whose caller is gone are dropped."""
        batch: list[_Pending[J, R]] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled by its caller
                self._queue.popleft()
                self._queued_rows -= head.rows
                continue
            if rows + head.rows > self.max_rows:
                if not batch:  # queued before max_rows shrank below its size: it can never run
                    self._queue.popleft()
                    self._queued_rows -= head.rows
                    head.future.set_exception(_too_big(head.rows, self.max_rows))
                    continue
                break
            self._queue.popleft()
            self._queued_rows -= head.rows
            rows += head.rows
            batch.append(head)
        return batch

    async def _run_batch(self, batch: list[_Pending[J, R]]) -> None:
        try:
            results = await self._run([p.job for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(batch)} jobs"
                )
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.cancel()
            raise
        except Exception as exc:  # every job of the batch fails with it; the next batch runs
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
