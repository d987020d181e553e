"""The Open Inference Protocol as the app registers it: under /v2, its error body, hints, probes and OpenAPI part."""

from __future__ import annotations

from service.core.errors import UnknownLayer
from service.frontends.http.registry import FrontEnd
from service.frontends.oip import openapi, routes, schema
from service.frontends.oip.routes import PREFIX, VERSION


def error_body(code: str, message: str, status: int, request_id: str | None) -> dict:  # noqa: ARG001 - no place
    """The protocol's error: ``{"error": message}``."""
    return {"error": message}


FRONT_END = FrontEnd(
    name="oip",
    title="the Open Inference Protocol",
    description="the Open Inference Protocol (KServe v2)",
    blueprints=(routes.oip,),
    prefix=PREFIX,
    error_body=error_body,
    error_schema="ErrorResponse",
    hints={UnknownLayer: f"GET {PREFIX}/models/<model> lists every output"},
    routes_hint=(
        f"v2 endpoints: GET {PREFIX}, {PREFIX}/health/live, {PREFIX}/health/ready, "
        f"{PREFIX}/models/<model>[/versions/{VERSION}][/ready]; "
        f"POST {PREFIX}/models/<model>[/versions/{VERSION}]/infer"
    ),
    probe_routes=frozenset({f"{PREFIX}/health/live", f"{PREFIX}/health/ready"}),
    path_values={"version": (VERSION,)},
    operations=openapi.operations,
    schemas=(
        schema.InferenceRequest,
        schema.InferenceResponse,
        schema.ServerMetadata,
        schema.ModelMetadata,
        schema.ServerLive,
        schema.ServerReady,
        schema.ModelReady,
        schema.ErrorResponse,
    ),
)
