"""The pieces every front-end's part of the OpenAPI document is written with.

service/frontends/docs.py assembles the document from the front-end registry: each front-end's
``operations(plane, describe)`` returns its operations by Flask endpoint name, written with a
:class:`Describe` that knows the model's input size and the front-end's error schema, and with
the helpers below. What is written by hand is what no code says: summaries, parameter
descriptions, and which statuses each operation answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from service.frontends.http.responses import TIMING_HEADERS

# What each error status means, whatever the front-end's error body.
STATUS_TEXT = {
    "400": "Bad request: unknown layer or output, bad parameter, undecodable or unsupported image",
    "401": "Missing or wrong API key",
    "404": "Unknown model (or version)",
    "413": "Body over LAYERTAP_MAX_BODY_BYTES, an image over LAYERTAP_MAX_PIXELS, or too many images",
    "415": "Unsupported content type or content encoding",
    "429": "Overloaded: retry after the Retry-After header's seconds",
    "503": "Not ready, or the request's deadline passed",
}


@dataclass(frozen=True)
class Describe:
    """What an operation table uses: the default model's crop, references to schemas, its error responses."""

    crop: int
    error_schema: str = "Error"
    binary: ClassVar[dict] = {"type": "string", "format": "binary"}
    answered_headers: ClassVar[dict] = {
        "X-Request-ID": {"$ref": "#/components/headers/RequestId"},
        "X-Batch-Size": {"$ref": "#/components/headers/BatchSize"},
        **{h: {"$ref": "#/components/headers/Milliseconds"} for h in TIMING_HEADERS},
    }

    @staticmethod
    def json(schema: str) -> dict:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}

    def body(self, schema: str) -> dict:
        return {"content": self.json(schema)}

    def errors(self, *statuses: str) -> dict:
        """Error responses, in this front-end's error body."""
        return {status: {"description": STATUS_TEXT[status], **self.body(self.error_schema)} for status in statuses}

    def probe(self, summary: str, up: str, down: str, schema: str, *errors: str) -> dict:
        """A liveness or readiness probe: 200 when ``up``, 503 when ``down``, the same body either way; and the
        error statuses it may also answer."""
        return {
            "summary": summary,
            "responses": {
                "200": {"description": up, **self.body(schema)},
                "503": {"description": down, **self.body(schema)},
                **self.errors(*errors),
            },
        }


def text(mimetype: str) -> dict:
    return {mimetype: {"schema": {"type": "string"}}}


def query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def int_query(name: str, default: int, maximum: int) -> dict:
    return query(name, {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}, f"Input {name}")
