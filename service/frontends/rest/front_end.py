"""The layertap REST API as the app registers it: its routes, errors, hints, probes and OpenAPI part."""

from __future__ import annotations

from service.core.errors import DeadlineExceeded, NotReady, Overloaded, UnknownLayer
from service.frontends.http.registry import FrontEnd
from service.frontends.rest import explain, openapi, routes, schema


def error_body(code: str, message: str, status: int, request_id: str | None) -> dict:  # noqa: ARG001 - in the code
    """Like werkzeug's own errors: ``{"error": {"code", "message", "request_id"}}``."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


FRONT_END = FrontEnd(
    name="api",
    title="the layertap API",
    blueprints=(routes.api, explain.explain_api),
    error_body=error_body,
    error_schema="Error",
    # What to add to a domain error's message in this API's words.
    hints={
        UnknownLayer: "GET /shapes lists them all; ?ops=true adds the op layers",
        NotReady: "retry when GET /ready answers 200",
        DeadlineExceeded: "LAYERTAP_REQUEST_TIMEOUT_S",
        Overloaded: "LAYERTAP_MAX_QUEUE_IMAGES",
    },
    probe_routes=frozenset({"/health", "/ready"}),
    open_routes=frozenset({"/metrics"}),
    quiet_routes=frozenset({"/metrics"}),
    operations=openapi.operations,
    schemas=(
        schema.Features,
        schema.Explanations,
        schema.Shapes,
        schema.Status,
        schema.Labels,
        schema.Info,
        schema.Error,
    ),
)
