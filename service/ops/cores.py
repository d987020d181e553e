"""What a server's workers share: the CPU cores (a worker alone with work takes all of them), and connections.

On the CPU each worker runs its forward passes on its share of the cores (``LAYERTAP_TORCH_THREADS``
0: cores ÷ workers), so that two busy workers do not fight over them. Oversubscribing is far
worse than idling: two workers of two torch threads each on 2 cores served 45 img/s at 4 clients
where two of one thread served 100 (docs/hardware.md). But a lone client would then see one core
do a pass that two could do, 3 ms slower per ResNet18 image.

So the workers show each other whether they are busy, in one page of memory that the gunicorn
master maps before it forks them (anonymous and shared: every child sees the same bytes). A
worker's slot holds the monotonic time until which it counts as busy: forever from the moment it
reserves room for an image (before the upload is read) until the last pass holding it ends, and
:data:`LINGER_S` after that. A model thread about to run a pass takes every core when no other
worker is busy, and its share otherwise (:func:`threads_for_pass`). The linger is meant for the
gap between one answer and the next request of a keep-alive client, during which a worker at 4
clients could take both cores and be overtaken by the other's next decode. It must stay short:
a lone client that opens a connection per request lands on either worker, and a worker that
still counts the other's last request as busy runs its pass on its share. In one run on 2 cores
(ResNet18, bfloat16), a lone fresh-connection client's p50 was 15.3 ms with one worker, and 21.2,
18.0 and 17.6 ms with two at a linger of 50, 5 and 0 ms; 4 keep-alive clients got 92.7, 97.5
and 97.8 img/s (one worker: 64.7). A worker that starts work during another's pass
oversubscribes the cores for the rest of that pass only.

The page also balances keep-alive connections. gunicorn's workers each accept from the shared
socket, so at 4 clients one worker could hold all 4 connections while the other idled, and a
connection stays where it landed (68 img/s at 4 clients, as one worker gives, against 100 when
they split 2 and 2). Each worker publishes how many connections it holds while it accepts
(:func:`publish_connections`); a worker holding more than another leaves new connections to it
(:func:`fewest_connections_elsewhere`, read by service/frontends/http/worker.py). The one with the
fewest always accepts, so a connection is never refused, only left to the other worker.

The master gives each worker a slot before forking it and clears the slot when the worker exits,
so a worker killed mid-pass leaves no stale mark. Outside gunicorn (in-process apps, the Ray
stage, the bench's in-process pipeline) no page is joined: :func:`threads_for_pass` returns the
share, and :func:`add_work` does nothing.
"""

from __future__ import annotations

import math
import mmap
import struct
import threading
import time

SLOTS = 256  # workers one master can track at once (gunicorn's TTIN can add workers at run time)
LINGER_S = 0.005  # a worker counts as busy this long after its work ends: a keep-alive client's turnaround
# Per worker: busy until this time.monotonic() (the same clock in every process on the host), and the connections
# it holds (-1: not accepting, booting or stopping).
_SLOT = struct.Struct("dd")
_BUSY_UNTIL, _CONNECTIONS = 0, 8  # the two fields' offsets in a slot


class WorkerPage:
    """The master's side: the shared page, and which slots belong to live workers."""

    def __init__(self, slots: int = SLOTS, linger_s: float = LINGER_S):
        if slots < 1:
            raise ValueError(f"a worker page needs at least one slot, not {slots}")
        self.slots, self.linger_s = slots, linger_s
        self.page = mmap.mmap(-1, slots * _SLOT.size)  # MAP_SHARED | MAP_ANONYMOUS: inherited across fork
        self._taken: set[int] = set()
        for slot in range(slots):
            self.free(slot)  # nobody there: idle, and not accepting

    def assign(self) -> int | None:
        """A free slot for the worker about to be forked; None when all are taken (it then never lends)."""
        slot = next((i for i in range(self.slots) if i not in self._taken), None)
        if slot is not None:
            self._taken.add(slot)
            _SLOT.pack_into(self.page, slot * _SLOT.size, 0.0, -1)
        return slot

    def free(self, slot: int | None) -> None:
        """The worker in ``slot`` exited: whatever it had in hand, and its connections, are gone."""
        if slot is not None:
            _SLOT.pack_into(self.page, slot * _SLOT.size, 0.0, -1)
            self._taken.discard(slot)


def _slots(page: mmap.mmap) -> list[tuple[float, float]]:
    return list(_SLOT.iter_unpack(page))


def _write(page: mmap.mmap, slot: int, field: int, value: float) -> None:
    """One field of one slot. Another worker may read it mid-write: a torn value misleads one decision
    (a pass's threads, an accept)."""
    struct.pack_into("d", page, slot * _SLOT.size + field, value)


class _ThisWorker:
    """This process's slot in the page, and the work it has in hand (images reserved, and images in passes)."""

    def __init__(self, page: mmap.mmap, slot: int, linger_s: float):
        self.page, self.slot, self.linger_s = page, slot, linger_s
        self.work = 0
        self.lock = threading.Lock()


_this: _ThisWorker | None = None


def join(page: WorkerPage, slot: int | None) -> None:
    """In a freshly forked worker: show this worker's work in ``slot`` of the master's page."""
    global _this
    _this = None if slot is None else _ThisWorker(page.page, slot, page.linger_s)


def leave() -> None:
    """Stop sharing (tests, and a process that outlives its worker role)."""
    global _this
    _this = None


def add_work(items: int) -> None:
    """``items`` more images in hand (negative: fewer); busy while any are, and the page's linger after."""
    worker = _this
    if worker is None:
        return
    with worker.lock:
        if worker.work + items < 0:
            raise ValueError(f"work released twice: {items} images released, {worker.work} in hand")
        worker.work += items
        _write(worker.page, worker.slot, _BUSY_UNTIL, math.inf if worker.work else time.monotonic() + worker.linger_s)


def busy_workers() -> int:
    """Workers of this server busy right now (this one included, when it is); 0 outside gunicorn."""
    worker = _this
    if worker is None:
        return 0
    now = time.monotonic()
    return sum(until > now for until, _ in _slots(worker.page))


def threads_for_pass(share: int, every: int) -> int:
    """Intra-op threads for the pass this worker is about to run: ``every`` core when no other worker has work
    in hand, else its ``share``. Outside gunicorn, always the share."""
    if share < 1 or every < share:
        raise ValueError(f"a worker's share ({share}) must be between 1 and every core ({every})")
    worker = _this
    if worker is None:
        return share
    now = time.monotonic()
    others = sum(until > now for slot, (until, _) in enumerate(_slots(worker.page)) if slot != worker.slot)
    return share if others else every


def publish_connections(connections: int | None) -> None:
    """The connections this worker holds while it accepts new ones; None when it does not (stopping)."""
    worker = _this
    if worker is not None:
        _write(worker.page, worker.slot, _CONNECTIONS, -1 if connections is None else connections)


def fewest_connections_elsewhere() -> int | None:
    """The fewest connections another accepting worker holds; None when no other worker accepts (or outside
    gunicorn)."""
    worker = _this
    if worker is None:
        return None
    counts = [held for slot, (_, held) in enumerate(_slots(worker.page)) if slot != worker.slot and held >= 0]
    return int(min(counts)) if counts else None
