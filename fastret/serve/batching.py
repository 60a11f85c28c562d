"""Dynamic batching for the server: texts from many concurrent requests share one model call.

(`encode_batches` is the other batching: one call's texts in length-sorted, token-budgeted batches.)

Requests (jobs: a few tokenized texts each) wait in a bounded queue. One worker thread takes what
is waiting, oldest first, up to a token budget, and runs the model on all of it at once, off the
event loop; each request is answered with its own rows. Before a call, the worker lets the
oldest waiting job age up to `max_wait_s`, so that requests arriving together share a call; it
does not wait when the budget is already full, and jobs that queued while the model ran are
already old enough. A full queue refuses new jobs (`QueueFull`, with a retry hint) instead of
growing; `close` lets the worker finish everything queued, then stops it.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np


class QueueFull(Exception):
    """The queue holds `max_queue_tokens` already; try again in `retry_after` seconds."""

    def __init__(self, queued_tokens: int, retry_after: int):
        super().__init__(f"the batching queue is full ({queued_tokens} tokens waiting); retry in {retry_after} s")
        self.retry_after = retry_after


class BatcherClosed(Exception):
    """The batcher is shutting down and takes no new jobs."""


@dataclass
class BatchReport:
    """What one model call did, for metrics.

    Attributes:
        jobs: requests answered; texts: texts embedded; tokens: their token count.
        queue_seconds: per job, the time from submission to the start of the call.
        run_seconds: the model call's duration.
    """

    jobs: int
    texts: int
    tokens: int
    queue_seconds: list[float]
    run_seconds: float


@dataclass
class _Job:
    items: Sequence[Any]
    tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    submitted: float


class Batcher:
    """One worker thread that runs queued jobs in shared, token-budgeted calls of `run`.

    Args:
        run: items [n] (the concatenated items of the jobs in one call) -> array [n, ...], row i
            for item i; called from the worker thread only.
        max_batch_tokens: most tokens per call (a larger job still runs, alone).
        max_wait_s: how long the oldest waiting job may wait for others to join its call.
        max_queue_tokens: most tokens waiting; a job that would exceed it is refused with
            `QueueFull` (a job arriving at an empty queue is always taken).
        on_batch: called with a `BatchReport` after each call (from the worker thread).

    Raises:
        ValueError: a budget < 1 or a negative wait.
    """

    def __init__(self, run: Callable[[list], np.ndarray], *, max_batch_tokens: int = 16384,
                 max_wait_s: float = 0.002, max_queue_tokens: int = 262144,
                 on_batch: Callable[[BatchReport], None] | None = None):
        for name, value in (("max_batch_tokens", max_batch_tokens), ("max_queue_tokens", max_queue_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(max_wait_s, (int, float)) or isinstance(max_wait_s, bool) or not 0 <= max_wait_s < 60:
            raise ValueError(f"max_wait_s must be a number of seconds in [0, 60), got {max_wait_s!r}")
        self._run, self._on_batch = run, on_batch
        self.max_batch_tokens, self.max_wait_s, self.max_queue_tokens = max_batch_tokens, float(max_wait_s), max_queue_tokens
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_tokens = 0
        self._tokens_per_second = 0.0  # of the last call; for the retry hint
        self._cond = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="fastret-batcher", daemon=True)
        self._worker.start()

    @property
    def queued_tokens(self) -> int:
        """Tokens waiting for a call."""
        with self._cond:
            return self._queued_tokens

    def alive(self) -> bool:
        """Whether the worker thread is running."""
        return self._worker.is_alive()

    async def submit(self, items: Sequence[Any], tokens: int) -> np.ndarray:
        """Queue one job and wait for its rows.

        Args:
            items: the job's n items (for the server: token ids and type ids per text), n >= 1.
            tokens: the job's token count (what the budgets count).

        Returns:
            `run`'s rows for these items, [n, ...], in order.

        Raises:
            QueueFull: the queue is full; BatcherClosed: shutting down; whatever `run` raised.
        """
        if not items:
            raise ValueError("a job needs at least one item")
        loop = asyncio.get_running_loop()
        job = _Job(list(items), int(tokens), loop.create_future(), loop, time.perf_counter())
        with self._cond:
            if self._closing:
                raise BatcherClosed("the server is shutting down")
            if self._queue and self._queued_tokens + job.tokens > self.max_queue_tokens:
                raise QueueFull(self._queued_tokens, self._retry_after())
            self._queue.append(job)
            self._queued_tokens += job.tokens
            self._cond.notify()
        return await job.future

    def close(self, timeout: float | None = None) -> None:
        """Take no new jobs, let the worker answer every queued one, and stop it."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._worker.join(timeout)

    def _retry_after(self) -> int:
        """Whole seconds until the queue should have drained (at least 1)."""
        if self._tokens_per_second <= 0:
            return 1
        return max(1, math.ceil(self._queued_tokens / self._tokens_per_second))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return  # closing, and everything queued has been answered
                while not self._closing and self._queued_tokens < self.max_batch_tokens:
                    remaining = self._queue[0].submitted + self.max_wait_s - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                jobs = self._take()
            self._run_jobs(jobs)

    def _take(self) -> list[_Job]:
        """Pop the oldest jobs that fit the token budget (at least one); called holding the lock."""
        jobs, tokens = [], 0
        while self._queue and (not jobs or tokens + self._queue[0].tokens <= self.max_batch_tokens):
            job = self._queue.popleft()
            self._queued_tokens -= job.tokens
            if job.future.cancelled():  # the client went away while it waited
                continue
            jobs.append(job)
            tokens += job.tokens
        return jobs

    def _run_jobs(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        start = time.perf_counter()
        items = [item for job in jobs for item in job.items]
        try:
            rows = self._run(items)
            if len(rows) != len(items):
                raise RuntimeError(f"the batch function returned {len(rows)} rows for {len(items)} items")
        except Exception as error:  # answered to every request of the call
            for job in jobs:
                _answer(job, None, error)
            return
        seconds = time.perf_counter() - start
        tokens = sum(job.tokens for job in jobs)
        self._tokens_per_second = tokens / seconds if seconds > 0 else 0.0
        offset = 0
        for job in jobs:
            _answer(job, rows[offset : offset + len(job.items)], None)
            offset += len(job.items)
        if self._on_batch is not None:
            self._on_batch(BatchReport(len(jobs), len(items), tokens, [start - job.submitted for job in jobs], seconds))


def _answer(job: _Job, result: Any, error: BaseException | None) -> None:
    """Hand a job's result to its event loop (a loop already closed has no one left to answer)."""
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Answer a job on its event loop, unless its request was cancelled meanwhile."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
