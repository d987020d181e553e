"""The batcher on its own, with a stand-in handler: admission, gathering, deadlines, failures. No model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.batching.batcher import Batcher
from service.core.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded


class Gate:
    """A handler that records each batch's payloads and waits for the test to open it."""

    def __init__(self):
        self.open = threading.Event()
        self.batches: list[list] = []

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        assert self.open.wait(30)
        return [f"done:{payload}" for payload in payloads]


@pytest.fixture
def make():
    made: list[Batcher] = []

    def make(handle, setup=lambda: None, **limits) -> Batcher:
        options = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queued": 8, "timeout_s": 30, **limits}
        batcher = Batcher("test", handle, **options)
        batcher.start(setup)
        wait_for(lambda: batcher.state != "starting")
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close(timeout=1)


def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def run(batcher: Batcher, payload, items: int = 1):
    with batcher.reserve(items) as ticket:
        return ticket.submit(payload)


def test_a_full_queue_refuses_at_once_and_frees_its_room_as_work_is_taken(make):
    gate = Gate()
    batcher = make(gate, max_queued=2, max_batch_size=1)
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(run, batcher, "a")
        wait_for(lambda: len(gate.batches) == 1)  # the thread is busy with "a"
        queued = [pool.submit(run, batcher, name) for name in "bc"]
        wait_for(lambda: batcher.waiting == 2)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            batcher.reserve(1)
        # At once: well short of the 30 s deadline a waiting reservation would run into.
        assert time.monotonic() - started < 5 and refused.value.retry_after_s == 1
        gate.open.set()
        assert [f.result(10).result for f in (running, *queued)] == ["done:a", "done:b", "done:c"]
    assert batcher.waiting == 0


def test_requests_waiting_for_room_are_refused_when_the_batcher_stops(make):
    batcher = make(Gate(), max_queued=1, max_batch_size=1, admission_wait_s=30)
    batcher.reserve(1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(batcher.reserve, 1)
        wait_for(lambda: batcher.admission.in_line == 1)
        started = time.monotonic()
        batcher.close(timeout=1)
        with pytest.raises(NotReady):
            waiting.result(10)
    assert time.monotonic() - started < 5  # answered at the stop, not at the end of its 30 s wait


def test_requests_waiting_for_room_get_the_failure_at_once_when_the_thread_dies():
    loading = threading.Event()

    def setup():
        assert loading.wait(30)
        raise RuntimeError("out of memory")

    options = {"max_batch_size": 1, "max_delay_s": 0.05, "max_queued": 1, "timeout_s": 30, "admission_wait_s": 30}
    batcher = Batcher("test", Gate(), **options)
    batcher.start(setup)
    try:
        batcher.reserve(1)  # the room, taken while the model loads
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(batcher.reserve, 1)
            wait_for(lambda: batcher.admission.in_line == 1)
            assert not waiting.done()
            started = time.monotonic()
            loading.set()
            with pytest.raises(InferenceFailed, match=r"stopped \(RuntimeError: out of memory\); the service must"):
                waiting.result(10)
        assert time.monotonic() - started < 5  # at the failure, not at the end of its 30 s wait
        with pytest.raises(InferenceFailed):
            batcher.reserve(1, wait=False)
    finally:
        batcher.close(timeout=1)


def test_work_prepared_across_the_stop_is_refused_at_once_not_at_its_deadline(make):
    batcher = make(Gate(), timeout_s=30)
    ticket = batcher.reserve(1)  # decoding when the stop comes
    batcher.close(timeout=1)
    started = time.monotonic()
    with pytest.raises(NotReady, match="shutting down"):
        ticket.submit("late")
    assert time.monotonic() - started < 5


def test_work_queued_behind_a_busy_thread_runs_as_one_batch(make):
    gate = Gate()
    batcher = make(gate, max_batch_size=8)
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(run, batcher, "first")
        wait_for(lambda: len(gate.batches) == 1)
        later = [pool.submit(run, batcher, name, 2) for name in "wxyz"]
        wait_for(lambda: batcher.waiting == 8)
        gate.open.set()
        done = [f.result(10) for f in later]
        first.result(10)
    assert [len(batch) for batch in gate.batches] == [1, 4]
    assert sorted(d.result for d in done) == ["done:w", "done:x", "done:y", "done:z"]
    assert all(d.batch_items == 8 and d.queue_ms > 0 and d.run_ms >= 0 for d in done)


def test_kinds_of_work_never_share_a_batch_and_each_has_its_own_limit(make):
    gate = Gate()
    batcher = make(gate, max_batch_size=8, batch_limits={"explain": 2})
    submitted: list = []

    def submit(payload, kind=None):
        with batcher.reserve(1) as ticket:
            submitted.append(payload)
            return ticket.submit(payload, kind=kind)

    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(submit, "first")
        wait_for(lambda: len(gate.batches) == 1)
        later = []
        for payload, kind in [("a", None), ("e1", "explain"), ("b", None), ("e2", "explain"), ("e3", "explain")]:
            later.append(pool.submit(submit, payload, kind))
            wait_for(lambda p=payload: p in submitted)
            wait_for(lambda: batcher.admission.preparing == 0)  # on the queue: the next one queues after it
        wait_for(lambda: batcher.waiting == 5)
        gate.open.set()
        assert sorted(f.result(10).result for f in later) == ["done:a", "done:b", "done:e1", "done:e2", "done:e3"]
        first.result(10)
    # A batch gathers its own kind past the other's jobs, which wait for the next batch in their order;
    # explain batches hold at most 2.
    assert gate.batches == [["first"], ["a", "b"], ["e1", "e2"], ["e3"]]


def test_expired_work_is_answered_and_never_handled(make):
    gate = Gate()
    batcher = make(gate, max_batch_size=1, timeout_s=0.3)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(run, batcher, "first")
        wait_for(lambda: len(gate.batches) == 1)
        with pytest.raises(DeadlineExceeded):
            run(batcher, "late")  # waits behind the gated batch, past its deadline
        with pytest.raises(DeadlineExceeded):
            first.result(10)
    gate.open.set()
    # The queue is first in, first out: once "next" is handled, "late" was taken before it, and dropped.
    assert run(batcher, "next").result == "done:next"
    assert gate.batches == [["first"], ["next"]], "the expired job must not reach the handler"


def test_a_failed_batch_fails_only_its_own_jobs(make):
    failures = iter([True])

    def flaky(payloads):
        if next(failures, False):
            raise RuntimeError("simulated kernel failure")
        return payloads

    batcher = make(flaky)
    with pytest.raises(InferenceFailed, match="simulated kernel failure"):
        run(batcher, "a")
    assert run(batcher, "b").result == "b"
    assert batcher.state == "running"


class Fatal(BaseException):
    """What kills a thread rather than a batch (as MemoryError inside the loop's own code would)."""


def test_a_dead_thread_fails_waiting_and_new_work_at_once(make):
    def fatal(payloads):
        raise Fatal("simulated")

    batcher = make(fatal)
    started = time.monotonic()
    with pytest.raises(InferenceFailed, match="thread stopped"):
        run(batcher, "a")
    assert time.monotonic() - started < 5, "no waiting for the deadline"
    assert batcher.state == "failed" and "Fatal" in batcher.failure
    with pytest.raises(InferenceFailed):
        batcher.reserve(1)


def test_a_setup_that_fails_fails_the_batcher(make):
    def broken():
        raise RuntimeError("CUDA out of memory (simulated)")

    batcher = make(Gate(), setup=broken)
    assert batcher.state == "failed" and "simulated" in batcher.failure


def test_limits_that_could_never_fill_a_batch_are_refused():
    with pytest.raises(ValueError, match="max_queued"):
        Batcher("test", list, max_batch_size=16, max_delay_s=0, max_queued=8, timeout_s=1)
