"""Admission control for one model thread: room for queued images, a fair line for it, and tickets.

Request threads reserve room for their items (images) *before* preparing them (decoding), so
refusing work under overload costs next to nothing. A request that finds the queue full waits in
line, up to the admission wait, for room. Waiting is what keeps goodput under overload: a client
that ignores ``Retry-After`` and resends at once would otherwise turn every freed slot into
hundreds of refusals, whose parsing and uploads take the CPU from the work admitted (HAProxy's
``timeout queue``). The line is first come, first served, so a request for many images is not
overtaken forever by single images.

The count of reservations still being prepared is what the model thread reads to decide whether a
batch is worth waiting for (:attr:`Admission.preparing`). It knows nothing of models or batches:
:class:`~service.batching.batcher.Batcher` owns one and gives its tickets somewhere to submit to.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.core.errors import Overloaded, ServiceError
from service.ops import cores, metrics

if TYPE_CHECKING:
    from service.batching.done import Done


class Ticket:
    """Room reserved for ``items``: submit the prepared payload once, or release it (``with`` does on error)."""

    def __init__(self, admission: Admission, submit: Callable[..., Done], items: int, deadline: float):
        self._admission, self._submit = admission, submit
        self.items, self.deadline = items, deadline
        self._open = True

    def submit(self, payload: Any, kind: str | None = None) -> Done:
        """Queue ``payload`` (batched only with payloads of the same ``kind``) and wait for its result."""
        self._open = False
        return self._submit(payload, self.items, self.deadline, kind)

    def resize(self, items: int) -> None:
        """Hold room for ``items`` instead: fewer frees the rest, more waits in line for it (Overloaded if none)."""
        if items > self.items:
            self._admission.acquire(items - self.items, wait=True)
        elif items < self.items:
            self._admission.release(self.items - items)
        self.items = items

    def release(self) -> None:
        if self._open:
            self._open = False
            self._admission.release(self.items, unsubmitted=True)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Admission:
    """Room for ``max_queued`` items of the thread called ``name``, and a line of ``wait_s`` for it."""

    def __init__(self, name: str, max_queued: int, wait_s: float = 0.0):
        self.name, self.max_queued, self.wait_s = name, max_queued, wait_s
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified whenever room frees or admission closes
        self._line: collections.deque = collections.deque()  # requests waiting for room, in their order
        self.waiting = 0  # reserved and not yet taken by the thread (being prepared, or queued)
        self.preparing = 0  # reservations not submitted yet: worth waiting for when forming a batch
        self._closed: Callable[[], ServiceError] | None = None

    @property
    def in_line(self) -> int:
        """Requests waiting for room right now."""
        with self._lock:
            return len(self._line)

    def reserve(self, items: int, submit: Callable[..., Done], timeout_s: float, wait: bool = True) -> Ticket:
        """Room for ``items`` or Overloaded (or the closing error); the ticket's deadline starts now."""
        self.acquire(items, wait)
        with self._lock:
            self.preparing += 1
        return Ticket(self, submit, items, time.monotonic() + timeout_s)

    def acquire(self, items: int, wait: bool) -> None:
        """Take room for ``items``, in line behind earlier requests when ``wait``; else raise Overloaded."""
        with self._lock:
            self._check_open()
            if not self._line and self.waiting + items <= self.max_queued:
                self._take(items)
                return
            if not wait or self.wait_s <= 0:
                raise self._overloaded()
            turn = object()
            self._line.append(turn)
            try:
                admitted = self._room.wait_for(
                    lambda: (
                        self._closed is not None or (self._line[0] is turn and self.waiting + items <= self.max_queued)
                    ),
                    self.wait_s,
                )
                self._check_open()
                if not admitted:
                    raise self._overloaded()
                self._take(items)
            finally:
                self._line.remove(turn)
                self._room.notify_all()  # the next in line may fit now

    def submitted(self) -> None:
        """A reservation's payload is queued: it is no longer being prepared (its room stays taken)."""
        with self._lock:
            self.preparing -= 1

    def release(self, items: int, unsubmitted: bool = False) -> None:
        """Free room for ``items``: the thread took them, or a request shrank or gave up.

        ``unsubmitted``: the reservation ends without a payload, so it is no longer being prepared either.
        """
        with self._lock:
            self.waiting -= items
            cores.add_work(-items)
            if unsubmitted:
                self.preparing -= 1
            metrics.QUEUE_IMAGES.labels(self.name).set(self.waiting)
            self._room.notify_all()

    def close(self, error: Callable[[], ServiceError]) -> None:
        """Refuse every reservation from now on with ``error()``, those waiting in line at once."""
        with self._lock:
            self._closed = error
            self._room.notify_all()

    def _take(self, items: int) -> None:
        self.waiting += items
        cores.add_work(items)  # this worker has work in hand from now on (service/ops/cores.py)
        metrics.QUEUE_IMAGES.labels(self.name).set(self.waiting)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed()

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"{self.waiting} images are already waiting for {self.name} (the queue holds {self.max_queued}); "
            "retry shortly",
            retry_after_s=1,
        )
