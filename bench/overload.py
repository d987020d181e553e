"""Goodput under overload: what a server still delivers when clients outnumber its capacity and do not back off.

Closed loop, keep-alive clients that resend at once whatever the answer (they ignore
``Retry-After``), against the capacity measured with 4 well-behaved clients in the same run.
The service keeps its goodput when a refusal costs far less than a served request: a request
waits up to ``LAYERTAP_MAX_QUEUE_WAIT_MS`` for room before its 429, so that spinning clients
cannot turn every freed slot into thousands of refusals (service/batching/admission.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from stress.load import Request, answered_within, closed_loop, percentile

RAW = {"Content-Type": "application/octet-stream"}


@dataclass
class GoodputRow:
    clients: int
    good_img_s: float  # 200s per second
    refused_per_s: float  # 429s and 503s per second
    other: int  # any other answer, 0 = no response
    p50_ok_ms: float
    ratio: float  # good_img_s ÷ the 4-client capacity


def goodput(url: str, photos: list[bytes], path: str, clients: tuple[int, ...], seconds: float) -> list[GoodputRow]:
    """The 4-client capacity first, then a row per client count (its ratio to that capacity)."""

    def make(i: int) -> Request:
        return Request("POST", path, photos[i % len(photos)], RAW)

    rows: list[GoodputRow] = []
    for count in (4, *clients):
        outcomes = answered_within(closed_loop(url, make, count, seconds=seconds), seconds)
        ok = [o.seconds for o in outcomes if o.status == 200]
        refused = sum(o.status in (429, 503) for o in outcomes)
        good = len(ok) / seconds
        capacity = rows[0].good_img_s if rows else good
        rows.append(
            GoodputRow(
                clients=count,
                good_img_s=good,
                refused_per_s=refused / seconds,
                other=len(outcomes) - len(ok) - refused,
                p50_ok_ms=percentile(ok, 0.5) * 1000,
                ratio=good / capacity if capacity else 0.0,
            )
        )
        print(
            f"  overload: {count:3d} clients  {good:7.1f} img/s good  {refused / seconds:7.1f} refusals/s  "
            f"p50 {rows[-1].p50_ok_ms:7.1f} ms  ×{rows[-1].ratio:.2f} of 4 clients",
            flush=True,
        )
    return rows


def table(rows: list[GoodputRow]) -> list[str]:
    lines = [
        "| clients | good img/s | refusals/s | other | p50 of 200s, ms | × 4-client capacity |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.clients} | {r.good_img_s:.1f} | {r.refused_per_s:.1f} | {r.other} | {r.p50_ok_ms:.0f} "
            f"| {r.ratio:.2f} |"
        )
    return lines
