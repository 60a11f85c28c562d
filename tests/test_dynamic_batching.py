import asyncio
import threading
import time

import numpy as np
import pytest

from fastret.serve.batching import Batcher, BatcherClosed, QueueFull


class Recorder:
    """A batch function that returns each item (a number) as a row [item, 2 * item] and records
    the items of every call; `gate` (when set) blocks calls until released."""

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[list] = []
        self.gate = gate

    def __call__(self, items):
        if self.gate is not None:
            assert self.gate.wait(10)
        self.calls.append(list(items))
        return np.array([[item, 2 * item] for item in items], dtype=np.float32)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_concurrent_jobs_share_one_call_and_get_their_own_rows():
    recorder = Recorder()
    reports = []
    batcher = Batcher(recorder, max_batch_tokens=1000, max_wait_s=0.2, on_batch=reports.append)

    async def main():
        jobs = [list(range(10 * j, 10 * j + 1 + j % 3)) for j in range(8)]
        results = await asyncio.gather(*(batcher.submit(items, tokens=len(items)) for items in jobs))
        return jobs, results

    try:
        jobs, results = run(main())
    finally:
        batcher.close()
    for items, rows in zip(jobs, results):
        np.testing.assert_array_equal(rows, [[i, 2 * i] for i in items])
    assert len(recorder.calls) == 1 and sorted(recorder.calls[0]) == sorted(i for job in jobs for i in job)
    assert len(reports) == 1
    report = reports[0]
    assert (report.jobs, report.texts, report.tokens) == (8, 15, 15)
    assert len(report.queue_seconds) == 8 and all(0 <= s < 5 for s in report.queue_seconds)
    assert report.run_seconds >= 0


def test_calls_respect_the_token_budget_and_a_large_job_runs_alone():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = Batcher(recorder, max_batch_tokens=12, max_wait_s=0)

    async def main():
        first = asyncio.ensure_future(batcher.submit([0], tokens=1))  # occupies the worker at the gate
        await asyncio.sleep(0.1)
        rest = [asyncio.ensure_future(batcher.submit([j], tokens=tokens))
                for j, tokens in enumerate([5, 5, 5, 20, 5], start=1)]
        await asyncio.sleep(0.1)  # all queued before the worker continues
        gate.set()
        await asyncio.gather(first, *rest)

    try:
        run(main())
    finally:
        gate.set()
        batcher.close()
    # oldest first: [1, 2] (10 tokens; + 3 would be 15), [3] (+ the 20-token job would exceed), [4] alone, [5]
    assert recorder.calls == [[0], [1, 2], [3], [4], [5]]


def test_a_full_queue_refuses_with_a_retry_hint_and_recovers():
    gate = threading.Event()
    batcher = Batcher(Recorder(gate), max_batch_tokens=4, max_wait_s=0, max_queue_tokens=10)

    async def main():
        running = asyncio.ensure_future(batcher.submit([0], tokens=4))
        await asyncio.sleep(0.1)  # taken by the worker: no longer queued
        queued = [asyncio.ensure_future(batcher.submit([i], tokens=4)) for i in (1, 2)]
        await asyncio.sleep(0.05)
        assert batcher.queued_tokens == 8
        with pytest.raises(QueueFull, match="8 tokens waiting") as refused:
            await batcher.submit([3], tokens=4)
        assert refused.value.retry_after >= 1
        small = asyncio.ensure_future(batcher.submit([4], tokens=2))  # 8 + 2 <= 10 still fits
        gate.set()
        rows = await asyncio.gather(running, *queued, small)
        assert [int(r[0, 0]) for r in rows] == [0, 1, 2, 4]
        assert batcher.queued_tokens == 0
        again = await batcher.submit([5], tokens=4)  # answered again once drained
        assert again.tolist() == [[5, 10]]

    try:
        run(main())
    finally:
        gate.set()
        batcher.close()


def test_an_empty_queue_takes_a_job_larger_than_its_bound():
    batcher = Batcher(Recorder(), max_batch_tokens=4, max_wait_s=0, max_queue_tokens=10)
    try:
        assert run(batcher.submit([7], tokens=50)).tolist() == [[7, 14]]
    finally:
        batcher.close()


def test_an_error_reaches_every_job_of_its_call_and_the_worker_goes_on():
    calls = []

    def flaky(items):
        calls.append(list(items))
        if 13 in items:
            raise RuntimeError("model failed")
        return np.asarray(items, dtype=np.float32)[:, None]

    batcher = Batcher(flaky, max_batch_tokens=100, max_wait_s=0.2)

    async def main():
        results = await asyncio.gather(batcher.submit([1], 1), batcher.submit([13], 1), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "model failed" in str(r) for r in results)
        assert (await batcher.submit([2], 1)).tolist() == [[2.0]]

    try:
        run(main())
    finally:
        batcher.close()
    assert calls == [[1, 13], [2]] and batcher.alive() is False


def test_a_wrong_row_count_is_an_error_not_a_misaligned_answer():
    batcher = Batcher(lambda items: np.zeros((len(items) + 1, 2)), max_wait_s=0)
    try:
        with pytest.raises(RuntimeError, match="returned 3 rows for 2 items"):
            run(batcher.submit([1, 2], 2))
    finally:
        batcher.close()


def test_cancelled_jobs_are_skipped():
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = Batcher(recorder, max_batch_tokens=100, max_wait_s=0)

    async def main():
        first = asyncio.ensure_future(batcher.submit([0], 1))
        await asyncio.sleep(0.1)
        gone = asyncio.ensure_future(batcher.submit([1], 1))
        kept = asyncio.ensure_future(batcher.submit([2], 1))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, kept)

    try:
        run(main())
    finally:
        gate.set()
        batcher.close()
    assert recorder.calls == [[0], [2]]


def test_close_answers_every_queued_job_then_refuses():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_tokens=2, max_wait_s=5)  # a long wait: close must cut it short

    async def main():
        futures = [asyncio.ensure_future(batcher.submit([i], 1)) for i in range(5)]
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, batcher.close)
        assert time.perf_counter() - start < 4
        assert [f.result().tolist() for f in futures] == [[[i, 2 * i]] for i in range(5)]
        with pytest.raises(BatcherClosed):
            await batcher.submit([9], 1)

    run(main())
    assert not batcher.alive()


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch_tokens": 0}, "max_batch_tokens must be an int >= 1, got 0"),
    ({"max_queue_tokens": 2.5}, "max_queue_tokens must be an int >= 1, got 2.5"),
    ({"max_wait_s": -1}, r"max_wait_s must be a number of seconds in \[0, 60\), got -1"),
    ({"max_wait_s": "1"}, "max_wait_s must be a number of seconds"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Batcher(Recorder(), **kwargs)


def test_an_empty_job_is_refused():
    batcher = Batcher(Recorder())
    try:
        with pytest.raises(ValueError, match="at least one item"):
            run(batcher.submit([], 0))
    finally:
        batcher.close()
