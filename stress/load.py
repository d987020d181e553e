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
from collections.abc import Callable
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
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def run() -> None:
        client, mine = Client(url, timeout), []
        while time.monotonic() < stop_at:
            index = next(counter)
            if count is not None and index >= count:
                break
            mine.append(client.send(requests(index)))
        client.close()
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


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
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    in_flight = [0]

    def run() -> None:
        client, mine = Client(url, timeout), []
        while True:
            index = tickets.get()
            if index is None:
                break
            mine.append(client.send(requests(index)))
            with lock:
                in_flight[0] -= 1
        client.close()
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(max_in_flight)]
    for thread in threads:
        thread.start()
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
    for _ in threads:
        tickets.put(None)
    for thread in threads:
        thread.join()
    return outcomes, skipped


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
