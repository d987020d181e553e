"""OpenAI's embeddings API as the app registers it: under /v1, OpenAI's error body, hints and OpenAPI part."""

from __future__ import annotations

from service.core.errors import NotReady, Overloaded, TextTooLong, UnknownLayer, UnknownModel
from service.frontends.http.registry import FrontEnd
from service.frontends.openai import openapi, routes, schema
from service.frontends.openai.routes import PREFIX

# OpenAI's error types, by status: its clients raise a class per status, and show the type.
ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}
# layertap's codes that OpenAI names otherwise
CODES = {"unknown_model": "model_not_found"}


def error_body(code: str, message: str, status: int, request_id: str | None) -> dict:  # noqa: ARG001 - not in it
    """OpenAI's error: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": CODES.get(code, code)}}


FRONT_END = FrontEnd(
    name="openai",
    title="OpenAI's embeddings API",
    description="OpenAI's embeddings API (images as data URLs, and texts)",
    blueprints=(routes.openai,),
    prefix=PREFIX,
    error_body=error_body,
    error_schema="OpenAIError",
    hints={
        UnknownModel: f"GET {PREFIX}/models lists them",
        UnknownLayer: "GET /shapes lists them",
        TextTooLong: 'send "truncate": true to cut longer texts',
        NotReady: "retry when GET /ready answers 200",
        Overloaded: "retry after the Retry-After header's seconds",
    },
    routes_hint=f"OpenAI endpoints: GET {PREFIX}/models, {PREFIX}/models/<model>; POST {PREFIX}/embeddings",
    operations=openapi.operations,
    schemas=(
        schema.EmbeddingsRequest,
        schema.EmbeddingsResponse,
        schema.ModelList,
        schema.Model,
        schema.OpenAIError,
    ),
)
