"""Load generators over loopback: closed loop (N clients back to back) and open loop (a fixed arrival rate).

Both use keep-alive ``http.client`` connections, one per client thread, and read every response
fully without parsing it, so the generator costs the shared CPU as little as it can.
"""

from __future__ import annotations

import http.client
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query string
    body: bytes | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True)
class Outcome:
    status: int  # 0 when the request failed without a response (connection error, timeout)
    seconds: float
    error: str = ""
    retry_after: str | None = None
    sent_at: float = 0.0  # time.monotonic() when the request was sent


class Client:
    """One keep-alive connection; reconnects after an error."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        self._host, self._port, self._timeout = parts.hostname, parts.port, timeout
        self._connection: http.client.HTTPConnection | None = None

    def send(self, request: Request) -> Outcome:
        sent_at, started = time.monotonic(), time.perf_counter()
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._connection.request(request.method, request.path, body=request.body, headers=request.headers or {})
            response = self._connection.getresponse()
            response.read()
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            elapsed = time.perf_counter() - started
            return Outcome(response.status, elapsed, retry_after=response.getheader("Retry-After"), sent_at=sent_at)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome(0, time.perf_counter() - started, error=type(exc).__name__, sent_at=sent_at)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Senders:
    """Client threads that each own one connection, send ``requests(i)`` for the indices they are
    given, and add their outcomes to one list when done."""

    def __init__(self, url: str, requests: Callable[[int], Request], timeout: float):
        self.url, self.requests, self.timeout = url, requests, timeout
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, count: int, indices: Callable[[], Iterable[int]], after_send: Callable[[], None] = lambda: None):
        """``count`` threads, each sending for every index of its own ``indices()`` iterable."""
        for _ in range(count):
            thread = threading.Thread(target=self._send, args=(indices(), after_send), daemon=True)
            thread.start()
            self._threads.append(thread)

    def join(self) -> list[Outcome]:
        for thread in self._threads:
            thread.join()
        return self.outcomes

    def _send(self, indices: Iterable[int], after_send: Callable[[], None]) -> None:
        client, mine = Client(self.url, self.timeout), []
        for index in indices:
            mine.append(client.send(self.requests(index)))
            after_send()
        client.close()
        with self.lock:
            self.outcomes.extend(mine)


def closed_loop(
    url: str,
    requests: Callable[[int], Request],
    clients: int,
    seconds: float | None = None,
    count: int | None = None,
    timeout: float = 60,
) -> list[Outcome]:
    """``clients`` threads send ``requests(i)`` back to back, for ``seconds`` or until ``count`` are sent."""
    if seconds is None and count is None:
        raise ValueError("closed_loop needs seconds or count")
    stop_at = time.monotonic() + seconds if seconds is not None else float("inf")
    counter = itertools.count()

    def indices():
        while time.monotonic() < stop_at:
            index = next(counter)
            if count is not None and index >= count:
                return
            yield index

    senders = _Senders(url, requests, timeout)
    senders.start(clients, indices)
    return senders.join()


def open_loop(
    url: str,
    requests: Callable[[int], Request],
    rate: float,
    seconds: float,
    max_in_flight: int = 256,
    timeout: float = 30,
) -> tuple[list[Outcome], int]:
    """Requests arrive at ``rate`` per second for ``seconds``, whatever the service does.

    Returns the outcomes and how many arrivals could not even be sent because ``max_in_flight``
    were already waiting (the generator's own limit, reported rather than hidden).
    """
    tickets: queue.Queue = queue.Queue()
    lock = threading.Lock()
    in_flight = [0]

    def answered() -> None:
        with lock:
            in_flight[0] -= 1

    senders = _Senders(url, requests, timeout)
    senders.start(max_in_flight, lambda: iter(tickets.get, None), answered)
    skipped, sent = 0, 0
    started = time.monotonic()
    total = int(rate * seconds)
    for index in range(total):
        due = started + index / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        with lock:
            if in_flight[0] >= max_in_flight:
                skipped += 1
                continue
            in_flight[0] += 1
        tickets.put(index)
        sent += 1
    for _ in range(max_in_flight):
        tickets.put(None)
    return senders.join(), skipped


def answered_within(outcomes: list[Outcome], seconds: float) -> list[Outcome]:
    """The outcomes answered within ``seconds`` of the first send: what a rate over ``seconds`` may count.

    A closed loop stops *sending* after its time, and the requests then in flight are answered
    later; with many clients and long queues, counting those would overstate the rate.
    """
    if not outcomes:
        return []
    end = min(o.sent_at for o in outcomes) + seconds
    return [o for o in outcomes if o.sent_at + o.seconds <= end]


def ok_rate_between(outcomes: list[Outcome], start: float, end: float) -> float:
    """200s per second answered between ``start`` and ``end`` seconds after the first send.

    A steady-state rate: skipping the first second leaves out the generator's own ramp (it opens
    its connections and the service's queue fills), which is no property of the service.
    """
    if not outcomes or end <= start:
        raise ValueError(f"need outcomes and end > start (got {len(outcomes)} outcomes, {start}..{end} s)")
    first = min(o.sent_at for o in outcomes)
    answered = [o for o in outcomes if o.status == 200 and start <= o.sent_at + o.seconds - first < end]
    return len(answered) / (end - start)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def closed_loop_processes(
    url: str, path: str, bodies: list[bytes], headers: dict[str, str], clients: int, seconds: float, processes: int
) -> list[Outcome]:
    """:func:`closed_loop` spread over ``processes`` processes, for rates one Python process cannot generate.

    Each process runs ``clients ÷ processes`` keep-alive clients that POST ``bodies`` in turn to ``path``.
    """
    import multiprocessing

    processes = max(1, min(processes, clients))
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or torch threads
    with context.Pool(processes) as pool:
        parts = pool.starmap(_closed_loop_part, [(url, path, bodies, headers, share, seconds) for share in shares])
    return [outcome for part in parts for outcome in part]


def _closed_loop_part(
    url: str, path: str, bodies: list[bytes], headers: dict[str, str], clients: int, seconds: float
) -> list[Outcome]:
    return closed_loop(url, lambda i: Request("POST", path, bodies[i % len(bodies)], headers), clients, seconds)


def raw_posts(path: str, images: list[bytes]) -> list[Request]:
    """One POST per photo, the photo as the raw body."""
    return [Request("POST", path, image, {"Content-Type": "application/octet-stream"}) for image in images]


def drive(url: str, requests_: list[Request], concurrency: int, seconds: float) -> tuple[list[float], int]:
    """`concurrency` keep-alive clients send `requests_` in turn for `seconds`; latencies (s) of 200s, and errors."""
    outcomes = closed_loop(url, lambda i: requests_[i % len(requests_)], concurrency, seconds)
    outcomes = answered_within(outcomes, seconds)
    return [o.seconds for o in outcomes if o.status == 200], sum(o.status != 200 for o in outcomes)
