"""Dynamic batching on one worker thread, with admission control and deadlines; it knows nothing of models.

Request threads :meth:`~Batcher.reserve` room for their items (images) *before* preparing them
(decoding), so refusing work under overload costs next to nothing (:mod:`service.batching.admission`);
they then :meth:`~service.batching.admission.Ticket.submit` a payload and wait on its future. The
batcher's thread runs ``setup`` once, then takes the first job, gathers the jobs that arrive
within ``max_delay_s`` (waiting only while reserved work is still being prepared, so a lone
client never waits), up to ``max_batch_size`` items, and hands their payloads to ``handle`` in
one call. A job may name its ``kind``: a batch holds jobs of one kind only (inference and
explanations are never mixed), up to that kind's own limit in ``batch_limits``; a job of another
kind, or one that would cross the limit, is held for the next batch while this one goes on
gathering its own kind. ``handle`` returns one result per payload, or a ServiceError for a
payload that alone failed; if it raises, only that batch's jobs fail.

A job whose client gave up (its future cancelled) or whose deadline passed before the thread
reached it is never handled. Everything that waits on this thread is answered, even if the
thread dies.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from service.batching.admission import Admission, Ticket
from service.batching.done import Done
from service.core.errors import DeadlineExceeded, InferenceFailed, NotReady, ServiceError
from service.ops import cores

log = logging.getLogger("layertap.batcher")

_STOP = object()


@dataclass
class _Job:
    payload: Any
    items: int
    deadline: float
    kind: str | None = None
    enqueued_at: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)


class Batcher:
    """One thread that runs ``setup()`` and then batches of payloads through ``handle``."""

    def __init__(
        self,
        name: str,
        handle: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queued: int,
        timeout_s: float,
        admission_wait_s: float = 0.0,
        batch_limits: dict[str, int] | None = None,
    ):
        if max_queued < max_batch_size:
            raise ValueError(f"max_queued ({max_queued}) must be at least max_batch_size ({max_batch_size})")
        self.name = name
        self._handle = handle
        self.max_batch_size, self.max_delay_s, self.max_queued, self.timeout_s = (
            max_batch_size,
            max_delay_s,
            max_queued,
            timeout_s,
        )
        self.batch_limits = dict(batch_limits or {})  # items per batch, by kind (default: max_batch_size)
        self.admission = Admission(name, max_queued, admission_wait_s)
        self._queue: queue.Queue = queue.Queue()
        self._held: collections.deque = collections.deque()  # taken while gathering another kind: next batch's
        self._thread: threading.Thread | None = None
        self.state = "created"  # created, starting, running, failed, stopped
        self.failure: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, setup: Callable[[], None]) -> None:
        self.state = "starting"
        self._thread = threading.Thread(target=self._serve, args=(setup,), name=f"layertap-{self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the jobs already queued; jobs that arrive later are refused as not ready."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        if self.state != "failed":
            self.state = "stopped"
            # Requests waiting for room are refused now, not at their wait's end.
            self.admission.close(lambda: NotReady("the service is shutting down", retry_after_s=1))
        self._fail_queued(NotReady("the service is shutting down", retry_after_s=1))

    @property
    def waiting(self) -> int:
        """Items reserved and not yet taken by the thread."""
        return self.admission.waiting

    # ---- request side ----------------------------------------------------------------------
    def reserve(self, items: int, wait: bool = True) -> Ticket:
        """Room for ``items`` (waiting in line for it with ``wait``), or Overloaded; the deadline starts now."""
        return self.admission.reserve(items, self._submit, self.timeout_s, wait)

    def _submit(self, payload: Any, items: int, deadline: float, kind: str | None = None) -> Done:
        job = _Job(payload=payload, items=items, deadline=deadline, kind=kind)
        self._queue.put(job)
        # Only now: the thread waits for more work while payloads are being prepared, and must not
        # see "nothing being prepared" and an empty queue between the two steps.
        self.admission.submitted()
        if self.state == "failed":  # the thread died while this was being prepared
            self._fail_queued(InferenceFailed(f"the {self.name} thread stopped; the service must restart"))
        elif self.state == "stopped":  # closed while this was being prepared: nothing will take it
            self._fail_queued(NotReady("the service is shutting down", retry_after_s=1))
        try:
            return job.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            job.future.cancel()  # if the thread has not reached it yet, it never will
            raise DeadlineExceeded(f"no result within {self.timeout_s:g} s", retry_after_s=1) from None
        except CancelledError:
            raise DeadlineExceeded("the request was cancelled before it was served") from None

    # ---- the thread --------------------------------------------------------------------------
    def _serve(self, setup: Callable[[], None]) -> None:
        try:
            setup()
        except Exception as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            log.exception("%s failed to start", self.name)
            self._fail_queued(InferenceFailed(f"{self.name} failed to start: {self.failure}"))
            return
        self.state = "running"
        batch: list = []
        try:
            while True:
                job = self._held.popleft() if self._held else self._queue.get()
                if job is _STOP:
                    break
                batch = self._gather(job)
                self._run(batch)
                if _STOP in batch:
                    break
        except BaseException as exc:  # the loop itself broke: no request may wait on a dead thread
            self._failed(f"{type(exc).__name__}: {exc}")
            log.exception("%s thread stopped", self.name)
            error = InferenceFailed(f"the {self.name} thread stopped ({type(exc).__name__}); the service must restart")
            for job in batch:
                if job is not _STOP and not job.future.done():
                    job.future.set_exception(error)
            self._fail_queued(error)

    def _failed(self, failure: str) -> None:
        self.failure, self.state = failure, "failed"
        self.admission.close(
            lambda: InferenceFailed(f"the {self.name} thread stopped ({failure}); the service must restart")
        )

    def _gather(self, first: _Job) -> list:
        """The first job plus those of its kind arriving within the delay, while more are on their way.

        Jobs of another kind, and a job that would take the batch past its kind's limit, are held
        for the next batches (in their order): they neither end this batch nor join it.
        """
        batch = [first]
        items = first.items
        limit = self.batch_limits.get(first.kind, self.max_batch_size)
        for job in list(self._held):  # held back earlier: queued before anything still in the queue
            if job is not _STOP and job.kind == first.kind and items + job.items <= limit:
                self._held.remove(job)
                batch.append(job)
                items += job.items
        wait_until = time.monotonic() + self.max_delay_s
        while items < limit:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or self.admission.preparing == 0:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.0005))
                except queue.Empty:
                    continue
            if job is not _STOP and (job.kind != first.kind or items + job.items > limit):
                self._held.append(job)
                continue
            batch.append(job)
            if job is _STOP:
                break
            items += job.items
        return batch

    def _run(self, batch: list) -> None:
        # Its images stay in this worker's hands until the pass ends, though their queue room frees now.
        in_hand = sum(job.items for job in batch if job is not _STOP)
        cores.add_work(in_hand)
        try:
            self._run_jobs(batch)
        finally:
            cores.add_work(-in_hand)

    def _run_jobs(self, batch: list) -> None:
        jobs: list[_Job] = []
        now = time.monotonic()
        for job in batch:
            if job is _STOP:
                continue
            self.admission.release(job.items)
            if not job.future.set_running_or_notify_cancel():
                continue  # its client gave up
            if job.deadline <= now:
                job.future.set_exception(DeadlineExceeded("the request's deadline passed while it waited"))
                continue
            jobs.append(job)
        if not jobs:
            return
        started = time.perf_counter()
        try:
            results = self._handle([job.payload for job in jobs])
        except Exception as exc:
            log.exception("a batch of %d jobs failed on %s", len(jobs), self.name)
            error = exc if isinstance(exc, ServiceError) else InferenceFailed(f"the batch failed: {exc}")
            for job in jobs:
                job.future.set_exception(error)
            return
        run_ms = (time.perf_counter() - started) * 1000
        items = sum(job.items for job in jobs)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, ServiceError):  # this job alone failed (an image its batch could not decode)
                job.future.set_exception(result)
            else:
                job.future.set_result(Done(result, (started - job.enqueued_at) * 1000, run_ms, items))

    def _fail_queued(self, error: ServiceError) -> None:
        """Answer every job still queued (arrived after the stop, or left by a dead thread)."""
        while True:
            try:
                job = self._held.popleft() if self._held else self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                self.admission.release(job.items)
                job.future.set_exception(error)
