"""One error renderer for every API front-end: a domain error or werkzeug's own, in the owner's words.

A client that is overloaded, unauthorized or asking for an unknown model gets the same status and
the same ``Retry-After`` from every front-end; only the body's shape (the front-end's
``error_body``) and the hints that name its URLs (``hints``, ``routes_hint``) differ. The owner
of a URL comes from the front-end registry (service/frontends/http/registry.py).
"""

from __future__ import annotations

import logging

from flask import Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from service.core.errors import (
    InternalError,
    InvalidRequest,
    Overloaded,
    RequestTimedOut,
    ServiceError,
    TooLarge,
    Unavailable,
    UnknownModel,
    UnsupportedMediaType,
)
from service.frontends.http.auth import Unauthorized
from service.frontends.http.bodies import body_limit_error
from service.frontends.http.registry import FrontEnd, FrontEnds
from service.frontends.http.responses import json_response
from service.ops import metrics

# Domain error → HTTP status, most specific first.
STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (Unauthorized, 401),
    (UnknownModel, 404),
    (UnsupportedMediaType, 415),
    (TooLarge, 413),
    (RequestTimedOut, 408),
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


def render_service_error(exc: ServiceError, front_end: FrontEnd) -> Response:
    """A domain error: its status, the front-end's hint for it, Retry-After and the bearer challenge."""
    status = status_of(exc)
    message = exc.message
    hint = next((text for kind, text in front_end.hints.items() if isinstance(exc, kind)), None)
    if hint:
        message = f"{message} ({hint})"
    if status >= 500:
        _log(front_end).error("%s: %s", exc.code, exc.message)
    return _error(front_end, exc.code, message, status, headers_of(exc))


def render_http_error(exc: HTTPException, front_end: FrontEnd, front_ends: FrontEnds) -> Response:
    """werkzeug's own errors: no route (with the front-end's routes), wrong method, a body over Flask's limit."""
    code = (exc.name or "error").lower().replace(" ", "_")
    message = exc.description or exc.name
    headers = {}
    if exc.code == 413:
        error = body_limit_error()
        code, message = error.code, error.message
    elif exc.code == 404:
        message = f"no route {request.path[:200]!r}; {_routes_hint(front_end, front_ends)}"
    elif exc.code == 405 and exc.valid_methods:
        headers["Allow"] = ", ".join(exc.valid_methods)
    return _error(front_end, code, message, exc.code or 500, headers)


def render_unexpected(exc: Exception, front_end: FrontEnd) -> Response:
    """A bug: logged with its stack, and told to the client without one."""
    _log(front_end).error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return _error(front_end, "internal_error", "an internal error occurred; it has been logged", 500)


def _error(front_end: FrontEnd, code: str, message: str, status: int, headers: dict[str, str] | None = None):
    metrics.ERRORS.labels(code).inc()
    body = front_end.error_body(code, message, status, g.get("request_id"))
    return json_response(body, status=status, headers=headers)


def _log(front_end: FrontEnd) -> logging.Logger:
    """Each front-end's errors under its own logger (layertap.api, layertap.oip), as before the registry."""
    return logging.getLogger(f"layertap.{front_end.name}")


def _routes_hint(front_end: FrontEnd, front_ends: FrontEnds) -> str:
    """The front-end's 404 hint, read from the app's routes once per app."""
    cache = current_app.extensions.setdefault("layertap.routes_hints", {})
    if front_end.name not in cache:
        cache[front_end.name] = front_ends.routes_hint(front_end, current_app.url_map)
    return cache[front_end.name]
