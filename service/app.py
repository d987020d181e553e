"""The application factory: ``create_app(settings)`` builds one Flask app around one data plane.

Nothing is built at import time. gunicorn calls ``service.app:create_app()`` in each worker,
after fork, so every worker process owns its own models and model threads; tests call it with
their own :class:`Settings`.

The front-ends are registered here and nowhere else (:data:`FRONT_ENDS`): each declares its
routes, prefix, error body, hints, and open and probe routes (service/frontends/http/registry.py).
Authentication, the access log and error rendering read that registry, so adding a protocol is
adding an entry, and no front-end knows another.
"""

from __future__ import annotations

import atexit
import logging
import time
import weakref
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from service.core.errors import ServiceError
from service.core.settings import Settings
from service.dataplane.plane import DataPlane
from service.frontends import docs
from service.frontends.http import errors
from service.frontends.http.auth import check_bearer
from service.frontends.http.registry import FrontEnd, FrontEnds
from service.frontends.http.upload_gate import UploadGate
from service.frontends.oip.front_end import FRONT_END as OPEN_INFERENCE_PROTOCOL
from service.frontends.openai.front_end import FRONT_END as OPENAI_EMBEDDINGS
from service.frontends.rest.front_end import FRONT_END as LAYERTAP_API
from service.frontends.ui.page import FRONT_END as DEBUG_PAGE
from service.ops import logs, metrics

if TYPE_CHECKING:
    from service.runners.seams import RunnerSeams

access_log = logging.getLogger("layertap.access")
KNOWN_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"})
# Every protocol the service speaks. The one API without a prefix (the layertap API) owns every other URL.
FRONT_ENDS: tuple[FrontEnd, ...] = (
    LAYERTAP_API,
    OPEN_INFERENCE_PROTOCOL,
    OPENAI_EMBEDDINGS,
    DEBUG_PAGE,
    docs.FRONT_END,
)


def create_app(settings: Settings | None = None, *, seams: RunnerSeams | None = None) -> Flask:
    """Build the app and start loading its models; ``/ready`` turns 200 once each has run a warm-up pass.

    ``seams`` changes how the runners pick their device, place their models or run a pass
    (service/runners/seams.py; tests use it). Raises :class:`~service.core.errors.StartupError`
    (with a message that says what to change) when a model entry or its weights cannot be had.
    """
    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_format)
    plane = DataPlane.from_settings(settings, seams=seams)
    front_ends = FrontEnds(FRONT_ENDS)

    app = Flask("layertap", static_folder=None)
    # No redirect is ever built from the client's Host header: werkzeug would answer /ui//app.js with a 308
    # to the merged path, and /ui with one to /ui/, both on whatever host the request named.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    # One byte over the limit, so that a chunked body past it is seen (bodies._read_body) rather than cut.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    # Multipart parts without a file name are form fields: let them be as large as a body.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    app.extensions["layertap.dataplane"] = plane
    app.extensions["layertap.settings"] = settings
    app.extensions["layertap.frontends"] = front_ends
    _install_request_hooks(app, settings, front_ends)
    for front_end in front_ends.all:
        for blueprint in front_end.blueprints:
            app.register_blueprint(blueprint)
    front_ends.check_routes(app.url_map)
    # Built now, so that a route no front-end describes stops the start, not a request for the document.
    app.extensions["layertap.openapi"] = docs.build_spec(plane, app.url_map, front_ends)
    _register_error_handlers(app, front_ends)
    # Unread bodies: 100 Continue only once the app reads, and a large refused upload closes rather than drains.
    app.wsgi_app = UploadGate(app.wsgi_app)
    plane.start()
    # Stop the model threads before the interpreter tears torch down under them.
    atexit.register(_close_at_exit, weakref.ref(plane))
    return app


def _register_error_handlers(app: Flask, front_ends: FrontEnds) -> None:
    """Errors in the words of the front-end whose URL was asked (the Open Inference Protocol's under /v2)."""

    def owner() -> FrontEnd:
        return front_ends.owner(request.path)

    app.register_error_handler(ServiceError, lambda exc: errors.render_service_error(exc, owner()))
    app.register_error_handler(HTTPException, lambda exc: errors.render_http_error(exc, owner(), front_ends))
    app.register_error_handler(Exception, lambda exc: errors.render_unexpected(exc, owner()))


def _install_request_hooks(app: Flask, settings: Settings, front_ends: FrontEnds) -> None:
    """Request id, authentication, then on the way out: metrics and one access-log line."""
    api_key = settings.api_key.get_secret_value() if settings.api_key else None

    @app.before_request
    def _begin() -> None:
        g.started = time.perf_counter()
        g.request_id = logs.request_id_from(request.headers.get("X-Request-ID"))
        rule = request.url_rule.rule if request.url_rule else request.path
        if api_key and (settings.auth_all_endpoints or not front_ends.is_open(rule)):
            check_bearer(request.headers.get("Authorization"), api_key)

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        status = str(response.status_code)
        method = request.method if request.method in KNOWN_METHODS else "OTHER"  # clients pick methods
        metrics.REQUESTS.labels(endpoint, method, status).inc()
        metrics.REQUEST_SECONDS.labels(endpoint, status).observe(elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        if endpoint not in front_ends.quiet_routes or response.status_code >= 400:
            access_log.info(
                "%s %s %s",
                request.method,
                request.full_path.rstrip("?"),
                response.status_code,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "query": request.query_string.decode("latin-1")[:500],
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                    # A streamed answer's length is unknown yet: calculating it would buffer the whole answer.
                    "bytes": None if response.is_streamed else response.calculate_content_length(),
                    "remote": request.remote_addr,
                },
            )
        return response


def _close_at_exit(plane_ref: weakref.ref) -> None:
    plane = plane_ref()
    if plane is not None:
        plane.close(timeout=5)
