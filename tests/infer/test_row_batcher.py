"""RowBatcher: batches in rows, cut when the runner is free (not ahead of it), FIFO, failures per batch."""

from __future__ import annotations

import asyncio

import pytest

from cora_ray.infer.row_batcher import RowBatcher


class Recorder:
    """A batch function that records each batch's jobs and takes `seconds` per batch."""

    def __init__(self, seconds: float = 0.0, fail_on: str | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.batches: list[list[str]] = []

    async def __call__(self, jobs: list[tuple[str, int]]) -> list[str]:
        self.batches.append([name for name, _ in jobs])
        await asyncio.sleep(self.seconds)
        if self.fail_on is not None and any(name == self.fail_on for name, _ in jobs):
            raise RuntimeError(f"forward failed on a batch with {self.fail_on}")
        return [f"scored {name}" for name, _ in jobs]


def rows_of(job: tuple[str, int]) -> int:
    return job[1]


def test_the_next_batch_takes_everything_that_queued_while_the_current_one_ran():
    async def main() -> list[list[str]]:
        run = Recorder(seconds=0.2)
        batcher = RowBatcher(run, rows_of, max_rows=20, wait_s=0.01)
        first = asyncio.ensure_future(batcher.submit(("a", 5)))
        await asyncio.sleep(0.05)  # "a" runs alone; six 5-row jobs arrive one by one while it runs
        later = []
        for name in "bcdefg":
            later.append(asyncio.ensure_future(batcher.submit((name, 5))))
            await asyncio.sleep(0.02)
        results = await asyncio.gather(first, *later)
        assert results == [f"scored {n}" for n in "abcdefg"]
        return run.batches

    # @serve.batch would have cut "b"'s batch 10 ms after "b" arrived (while "a" still ran): ["b"], ["c"], ...
    assert asyncio.run(main()) == [["a"], ["b", "c", "d", "e"], ["f", "g"]]


def test_an_idle_batcher_waits_wait_s_for_company_then_runs_what_it_has():
    async def main() -> list[list[str]]:
        run = Recorder()
        batcher = RowBatcher(run, rows_of, max_rows=20, wait_s=0.2)
        a = asyncio.ensure_future(batcher.submit(("a", 5)))
        await asyncio.sleep(0.02)
        b = asyncio.ensure_future(batcher.submit(("b", 5)))
        await asyncio.gather(a, b)
        c = asyncio.ensure_future(batcher.submit(("c", 5)))
        await asyncio.sleep(0.5)  # past wait_s: "c" ran alone
        d = asyncio.ensure_future(batcher.submit(("d", 5)))
        await asyncio.gather(c, d)
        return run.batches

    assert asyncio.run(main()) == [["a", "b"], ["c"], ["d"]]


def test_a_full_batch_does_not_wait():
    async def main() -> list[list[str]]:
        run = Recorder()
        batcher = RowBatcher(run, rows_of, max_rows=10, wait_s=1e9)  # waiting would never end
        jobs = asyncio.gather(batcher.submit(("a", 4)), batcher.submit(("b", 6)))
        await asyncio.wait_for(jobs, timeout=120)  # a hang guard only: the full batch runs at once
        return run.batches

    assert asyncio.run(main()) == [["a", "b"]]


def test_first_come_first_served_a_job_that_does_not_fit_leads_the_next_batch():
    async def main() -> list[list[str]]:
        run = Recorder(seconds=0.1)
        batcher = RowBatcher(run, rows_of, max_rows=10, wait_s=0.0)
        block = asyncio.ensure_future(batcher.submit(("x", 1)))
        await asyncio.sleep(0.02)
        jobs = [batcher.submit(j) for j in (("a", 6), ("b", 6), ("c", 2), ("d", 2))]
        await asyncio.gather(block, *jobs)
        return run.batches

    # "c" (2 rows) would fit beside "a", but it came after "b": no overtaking
    assert asyncio.run(main()) == [["x"], ["a"], ["b", "c", "d"]]


def test_a_failed_batch_fails_each_of_its_jobs_and_the_next_batch_still_runs():
    async def main() -> tuple[list, list[list[str]]]:
        run = Recorder(seconds=0.1, fail_on="bad")
        batcher = RowBatcher(run, rows_of, max_rows=4, wait_s=0.0)
        block = asyncio.ensure_future(batcher.submit(("x", 1)))
        await asyncio.sleep(0.02)
        outcomes = await asyncio.gather(
            batcher.submit(("bad", 2)),
            batcher.submit(("ok1", 2)),
            batcher.submit(("ok2", 2)),
            return_exceptions=True,
        )
        await block
        return outcomes, run.batches

    outcomes, batches = asyncio.run(main())
    assert batches == [["x"], ["bad", "ok1"], ["ok2"]]
    assert all(isinstance(o, RuntimeError) and "forward failed" in str(o) for o in outcomes[:2])
    assert outcomes[2] == "scored ok2"


def test_a_job_whose_caller_is_gone_is_not_run():
    async def main() -> list[list[str]]:
        run = Recorder(seconds=0.1)
        batcher = RowBatcher(run, rows_of, max_rows=10, wait_s=0.0)
        block = asyncio.ensure_future(batcher.submit(("x", 1)))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(batcher.submit(("gone", 5)))
        kept = asyncio.ensure_future(batcher.submit(("kept", 5)))
        await asyncio.sleep(0.01)
        gone.cancel()  # e.g. the HTTP client disconnected
        await asyncio.gather(block, kept)
        assert batcher.queued_rows == 0
        return run.batches

    assert asyncio.run(main()) == [["x"], ["kept"]]


def test_sizes_are_checked_and_a_smaller_bound_applies_to_the_next_batch():
    async def main() -> tuple[list[list[str]], list]:
        run = Recorder(seconds=0.1)
        batcher = RowBatcher(run, rows_of, max_rows=10, wait_s=0.0)
        with pytest.raises(ValueError, match="11 rows does not fit a batch of at most 10"):
            await batcher.submit(("huge", 11))
        block = asyncio.ensure_future(batcher.submit(("x", 1)))
        await asyncio.sleep(0.02)
        queued = [asyncio.ensure_future(batcher.submit(j)) for j in (("a", 8), ("b", 2), ("c", 2))]
        await asyncio.sleep(0)
        batcher.configure(max_rows=4, wait_s=0.0)  # "a" (8 rows) was accepted under the old bound
        outcomes = await asyncio.gather(block, *queued, return_exceptions=True)
        return run.batches, outcomes

    batches, outcomes = asyncio.run(main())
    assert batches == [["x"], ["b", "c"]]
    assert isinstance(outcomes[1], ValueError) and "8 rows does not fit a batch of at most 4" in str(
        outcomes[1]
    )
    assert outcomes[2:] == ["scored b", "scored c"]
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        RowBatcher(Recorder(), rows_of, max_rows=0, wait_s=0.0)
