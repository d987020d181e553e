"""What both HTTP front-ends share: the status and headers of a domain error, and the timing headers.

The layertap API (service/api.py) and the Open Inference Protocol (service/oip/) word their
error bodies differently, but a client that is overloaded, unauthorized or asking for an unknown
model gets the same status and the same ``Retry-After`` from either, and every answer with
features says where its time went in the same headers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .auth import Unauthorized
from .errors import (
    InternalError,
    InvalidRequest,
    Overloaded,
    ServiceError,
    TooLarge,
    Unavailable,
    UnknownModel,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    from .dataplane import Timings

TIMING_HEADERS = ("X-Preprocess-Time", "X-Queue-Time", "X-Inference-Time", "X-Total-Time")

# Domain error → HTTP status, most specific first.
STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (Unauthorized, 401),
    (UnknownModel, 404),
    (UnsupportedMediaType, 415),
    (TooLarge, 413),
    (InvalidRequest, 400),
    (Overloaded, 429),
    (Unavailable, 503),
    (InternalError, 500),
)


def status_of(exc: ServiceError) -> int:
    return next((code for kind, code in STATUSES if isinstance(exc, kind)), 500)


def headers_of(exc: ServiceError) -> dict[str, str]:
    """``Retry-After`` when a retry may succeed, and the bearer challenge on a 401."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="layertap"'
    return headers


def timing_headers(timings: Timings, started: float) -> dict[str, str]:
    """Milliseconds per stage, the request's total since ``started`` (perf_counter), and the forward pass's images."""
    return {
        "X-Preprocess-Time": f"{timings.preprocess_ms:.2f}",
        "X-Queue-Time": f"{timings.queue_ms:.2f}",
        "X-Inference-Time": f"{timings.inference_ms:.2f}",
        "X-Batch-Size": str(timings.batch_images),
        "X-Total-Time": f"{(time.perf_counter() - started) * 1000:.2f}",
    }
