"""Continuous batching in front of the engine (toolace_r.serve.batching.BatchQueue), with a stand-in engine."""
from __future__ import annotations

import asyncio
import time

from toolace_r.serve.batching import BatchQueue


def _queue_run(delay_s: float, calls: list[list[str]], fail: bool = False):
    """An engine stand-in for the queue's scheduling only (the engine itself: test_engine.py): records each batch,
    takes `delay_s` like a forward pass would, answers each job with its own name."""
    async def run(jobs):
        calls.append([j for j in jobs])
        await asyncio.sleep(delay_s)
        if fail:
            raise RuntimeError("engine thread died")
        return [f"out:{j}" for j in jobs]

    return run


def test_batch_queue_puts_everything_that_arrived_during_a_batch_into_the_next():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.2, calls), max_batch_size=4, wait_s=0.0)
        first = asyncio.create_task(queue.submit("a"))
        await asyncio.sleep(0.05)  # "a" runs alone; these six arrive while it runs
        rest = [asyncio.create_task(queue.submit(x)) for x in "bcdefg"]
        outs = await asyncio.gather(first, *rest)
        return calls, outs

    calls, outs = asyncio.run(scenario())
    assert outs == [f"out:{x}" for x in "abcdefg"]  # each caller gets its own answer
    assert calls == [["a"], ["b", "c", "d", "e"], ["f", "g"]]  # full batches, capped at max_batch_size, in order


def test_batch_queue_lone_request_waits_at_most_wait_s_and_bursts_share_a_batch():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.0, calls), max_batch_size=8, wait_s=0.05)
        t0 = time.perf_counter()
        await queue.submit("alone")
        lone = time.perf_counter() - t0
        burst = [asyncio.create_task(queue.submit(x)) for x in "xyz"]
        await asyncio.sleep(0.01)
        late = asyncio.create_task(queue.submit("w"))  # within the idle wait: joins the burst's batch
        await asyncio.gather(*burst, late)
        return calls, lone

    calls, lone = asyncio.run(scenario())
    assert 0.04 <= lone < 0.5, lone
    assert calls == [["alone"], ["x", "y", "z", "w"]]


def test_batch_queue_engine_failure_reaches_every_waiting_request_and_the_queue_goes_on():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.0, calls, fail=True), max_batch_size=4, wait_s=0.0)
        failed = await asyncio.gather(queue.submit("a"), queue.submit("b"))
        queue.run = _queue_run(0.0, calls)
        return failed, await queue.submit("c")

    failed, after = asyncio.run(scenario())
    assert all(isinstance(f, RuntimeError) for f in failed)
    assert after == "out:c"


def test_batch_queue_requests_that_waited_for_a_busy_model_do_not_wait_again():
    """The idle wait is for a model with nothing to do: requests that queued behind a running batch go at once."""
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.1, calls), max_batch_size=2, wait_s=0.5)
        first = [asyncio.create_task(queue.submit(x)) for x in "ab"]  # a full batch: no wait
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        await queue.submit("c")  # queued behind [a, b]: runs when they finish, without the 0.5 s idle wait
        waited = time.perf_counter() - t0
        await asyncio.gather(*first)
        return calls, waited

    calls, waited = asyncio.run(scenario())
    assert calls == [["a", "b"], ["c"]]
    assert waited < 0.4, waited


def test_batch_queue_a_caller_that_goes_away_does_not_disturb_the_others():
    async def scenario():
        calls: list[list[str]] = []
        queue = BatchQueue(_queue_run(0.1, calls), max_batch_size=4, wait_s=0.0)
        running = asyncio.create_task(queue.submit("a"))
        await asyncio.sleep(0.02)
        waiting = {x: asyncio.create_task(queue.submit(x)) for x in "bcd"}
        await asyncio.sleep(0.02)
        waiting["c"].cancel()  # client disconnected while queued behind "a"
        out = await asyncio.gather(running, waiting["b"], waiting["d"])
        return calls, out, queue

    calls, out, queue = asyncio.run(scenario())
    assert out == ["out:a", "out:b", "out:d"]
    assert calls == [["a"], ["b", "d"]]  # the cancelled request never reached the model
    assert (queue.batches, queue.jobs) == (2, 3)
