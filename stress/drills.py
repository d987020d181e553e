"""The three drills of ``make stress``: overload, soak and faults, each returning a result to check.

Each drill takes a running service (``stress.server.Server``), bounds itself in time and request
count, and talks to loopback only.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field

import requests as http

from .load import Outcome, Request, closed_loop, ok_rate_between, open_loop, percentile
from .server import Server, rss_mb

RAW = {"Content-Type": "application/octet-stream"}


# Rates leave out each load's first second: the generator opens its connections and the queue fills
# (on two cores the open loop's first second served 14-20 images against 32-45 in the next ones).
RAMP_S = 1.0


def photo_requests(photos: list[bytes], query: str = "layers=avgpool"):
    return lambda i: Request("POST", f"/features?{query}", photos[i % len(photos)], RAW)


@dataclass
class OverloadResult:
    capacity: float  # img/s with enough clients to saturate (steady state), mean of before and after the overload
    offered: float  # arrivals per second during the overload
    seconds: float
    sent: int
    not_sent: int  # arrivals the generator could not send (its own in-flight cap)
    ok: int
    shed: int  # 429 and 503
    other: dict[int, int]  # any other status, 0 = no response
    accepted_rate: float  # 200s per second during the overload (steady state)
    p99_ok_s: float
    p99_shed_s: float
    max_s: float
    recovery_s: float  # latency of a single request right after the load stops
    recovery_status: int

    @property
    def lost(self) -> int:
        return sum(self.other.values())


def overload(server: Server, photos: list[bytes], factor: float = 3, seconds: float = 10) -> OverloadResult:
    """Measure capacity, offer `factor` × that for `seconds`, time one request right after, measure capacity again.

    Up to 256 requests are in flight: more than the service's threads, so that some wait in
    gunicorn's connection queue, some in line for room, and some may be refused. Rates are steady
    state: the answers that arrived between the load's first second (RAMP_S) and its end.
    """
    make = photo_requests(photos)
    closed_loop(server.url, make, clients=16, seconds=2)  # warm-up: batch shapes, allocator
    window = max(5.0, seconds)
    capacity_before = ok_rate_between(closed_loop(server.url, make, clients=16, seconds=window), RAMP_S, window)
    rate = factor * capacity_before
    outcomes, not_sent = open_loop(server.url, make, rate=rate, seconds=seconds, max_in_flight=256, timeout=30)
    ok = [o for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status in (429, 503)]
    other: dict[int, int] = {}
    for o in outcomes:
        if o.status not in (200, 429, 503):
            other[o.status] = other.get(o.status, 0) + 1
    recovery = closed_loop(server.url, make, clients=1, count=1)[0]
    # Capacity again after the overload: a shared machine's speed drifts by ±10% from one window to the
    # next, and the mean of the windows either side is the fairer yardstick for the one between.
    capacity_after = ok_rate_between(closed_loop(server.url, make, clients=16, seconds=window), RAMP_S, window)
    return OverloadResult(
        capacity=(capacity_before + capacity_after) / 2,
        offered=rate,
        seconds=seconds,
        sent=len(outcomes),
        not_sent=not_sent,
        ok=len(ok),
        shed=len(shed),
        other=other,
        accepted_rate=ok_rate_between(outcomes, RAMP_S, seconds),
        p99_ok_s=percentile([o.seconds for o in ok], 0.99),
        p99_shed_s=percentile([o.seconds for o in shed], 0.99),
        max_s=max((o.seconds for o in outcomes), default=0.0),
        recovery_s=recovery.seconds,
        recovery_status=recovery.status,
    )


@dataclass
class SoakResult:
    requests: int
    failures: dict[int, int]
    rss_after_warmup_mb: float
    rss_end_mb: float
    hooks_before: int
    hooks_after: int
    threads_before: int
    threads_after: int
    seconds: float

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_after_warmup_mb


def soak(server: Server, photos: list[bytes], count: int = 5000, clients: int = 8) -> SoakResult:
    """`count` requests with mixed layers, options and body forms; RSS, hooks and threads before and after."""
    queries = [
        "layers=avgpool",
        "layers=fc",
        "layers=layer1&pool=avg",
        "layers=bn1,layer1.0.relu_1&pool=max&normalize=true",
        "layers=layer4&encoding=base64",
        "layers=layer2.1,layer3&pool=avg",
        "layers=nope",  # a 400 now and then, as in real traffic
    ]

    def make(i: int) -> Request:
        return Request("POST", f"/features?{queries[i % len(queries)]}", photos[(i // 7) % len(photos)], RAW)

    # Warm-up: every batch size and layer mix the soak will see, so that allocator and kernel
    # caches reach their steady state before the baseline is taken.
    closed_loop(server.url, make, clients=clients, count=max(1500, count // 5))
    worker = server.workers()[0]
    info = http.get(f"{server.url}/info", timeout=10).json()
    # RSS is sampled all along: a leak grows steadily, while the allocator moves RSS up and down
    # by tens of MB from one moment to the next. Growth = median of the last quarter of the
    # samples minus median of the first quarter.
    samples: list[float] = []
    outcomes: list[Outcome] = []
    started = time.monotonic()
    load = threading.Thread(target=lambda: outcomes.extend(closed_loop(server.url, make, clients=clients, count=count)))
    load.start()
    while load.is_alive():
        samples.append(rss_mb(worker))
        time.sleep(0.2)
    load.join()
    elapsed = time.monotonic() - started
    quarter = max(1, len(samples) // 4)
    print(f"soak RSS samples (MB): {[round(x) for x in samples[:: max(1, len(samples) // 12)]]}", flush=True)
    time.sleep(0.5)  # let the last request threads go idle
    info_after = http.get(f"{server.url}/info", timeout=10).json()
    statuses: dict[int, int] = {}
    for outcome in outcomes:
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    expected_bad = sum(1 for i in range(count) if queries[i % len(queries)] == "layers=nope")
    failures = {status: n for status, n in statuses.items() if status not in (200, 400)}
    if statuses.get(400, 0) != expected_bad:
        failures[400] = abs(statuses.get(400, 0) - expected_bad)
    return SoakResult(
        requests=len(outcomes),
        failures=failures,
        rss_after_warmup_mb=statistics.median(samples[:quarter]),
        rss_end_mb=statistics.median(samples[-quarter:]),
        hooks_before=info["hooks"],
        hooks_after=info_after["hooks"],
        threads_before=info["threads"],
        threads_after=info_after["threads"],
        seconds=elapsed,
    )


@dataclass
class FaultResult:
    killed_pid: int
    replaced_by: int | None
    replacement_seconds: float | None
    requests: int
    failed_near_kill: int  # no response, for requests that were running around the kill
    failed_later: int  # any failure for requests started 1 s or more after the kill
    not_ready_answers: int  # 503 not_ready: a cold worker answering (must be 0)
    ready_probes: list[int] = field(default_factory=list)


def kill_a_worker(server: Server, photos: list[bytes], seconds: float = 12, clients: int = 6) -> FaultResult:
    """SIGKILL one of two workers while requests run; it must be replaced, and others must not notice."""
    workers = server.workers()
    if len(workers) < 2:
        raise ValueError("the fault drill needs a server with LAYERTAP_WORKERS ≥ 2")
    victim = workers[0]
    stop_at = time.monotonic() + seconds
    outcomes: list[Outcome] = []
    load = threading.Thread(
        target=lambda: outcomes.extend(
            closed_loop(server.url, photo_requests(photos), clients=clients, seconds=seconds, timeout=30)
        )
    )
    load.start()
    time.sleep(seconds / 4)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    probes: list[int] = []
    replaced_by, replaced_after = None, None
    while time.monotonic() < stop_at:
        probes.append(http.get(f"{server.url}/ready", timeout=10).status_code)
        if replaced_by is None:
            replaced_by = next((pid for pid in server.workers() if pid not in workers), None)
        if replaced_by and replaced_after is None and f'"pid":{replaced_by}' in server.log():
            replaced_after = time.monotonic() - killed_at  # its model is warm: it accepts from now on
        time.sleep(0.2)
    load.join()
    return FaultResult(
        killed_pid=victim,
        replaced_by=replaced_by,
        replacement_seconds=replaced_after,
        requests=len(outcomes),
        failed_near_kill=sum(1 for o in outcomes if o.sent_at < killed_at + 1 and o.status != 200),
        failed_later=sum(1 for o in outcomes if o.sent_at >= killed_at + 1 and o.status != 200),
        not_ready_answers=sum(1 for o in outcomes if o.status == 503),
        ready_probes=probes,
    )
