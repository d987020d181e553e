"""What both HTTP front-ends share: JSON answers, the status and headers of errors, the timing headers.

The layertap API (service/frontends/rest/routes.py) and the Open Inference Protocol (service/frontends/oip/) word their
error bodies differently, but a client that is overloaded, unauthorized or asking for an unknown
model gets the same status and the same ``Retry-After`` from either, and every answer with
features says where its time went in the same headers.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson
from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException

from service.core.errors import (
    InternalError,
    InvalidRequest,
    Overloaded,
    ServiceError,
    TooLarge,
    Unavailable,
    UnknownModel,
    UnsupportedMediaType,
)
from service.frontends.http.auth import Unauthorized
from service.frontends.http.bodies import body_limit_error

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane, Timings

log = logging.getLogger("layertap.http")

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


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def expects_continue() -> bool:
    """Whether the client waits for ``100 Continue`` before uploading: it waits about a second before it uploads
    anyway, so under overload it is refused at once rather than after the admission wait."""
    return request.headers.get("Expect", "").lower() == "100-continue"


def http_error(exc: HTTPException, routes: str) -> tuple[str, str, int, dict[str, str]]:
    """werkzeug's own errors (no route, wrong method, body over Flask's limit) as (code, message, status, headers);
    ``routes`` lists the front-end's endpoints for a 404."""
    code = (exc.name or "error").lower().replace(" ", "_")
    message = exc.description or exc.name
    headers = {}
    if exc.code == 413:
        error = body_limit_error()
        code, message = error.code, error.message
    elif exc.code == 404:
        message = f"no route {request.path[:200]!r}; {routes}"
    elif exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return code, message, exc.code or 500, headers


def unexpected_error(exc: Exception) -> tuple[str, str, int]:
    """A bug: logged with its stack, and told to the client without one."""
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return "internal_error", "an internal error occurred; it has been logged", 500


def data_plane() -> DataPlane:
    """The data plane of the app serving this request."""
    return current_app.extensions["layertap.dataplane"]
