"""OpenAI's embeddings API in the OpenAPI document (service/frontends/docs.py assembles it).

Keyed by Flask endpoint name; paths, path parameters, security and the message schemas come from
the routes and from service/frontends/openai/schema.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.frontends.http.openapi import Describe


def operations(plane: DataPlane, d: Describe) -> dict[str, dict]:  # noqa: ARG001 - every front-end's signature
    return {
        "openai.models": {
            "summary": "The served models (OpenAI's models list)",
            "responses": {"200": {"description": "OK", **d.body("ModelList")}},
        },
        "openai.model": {
            "summary": "One served model (OpenAI's model object)",
            "responses": {"200": {"description": "OK", **d.body("Model")}, **d.errors("404")},
        },
        "openai.embeddings": {
            "summary": "Embeddings of images (data URLs) and texts (models with a text tower), as OpenAI's API",
            "requestBody": {"required": True, **d.body("EmbeddingsRequest")},
            "responses": {
                "200": {
                    "description": "One L2-normalized vector per input, in input order",
                    "headers": d.answered_headers,
                    **d.body("EmbeddingsResponse"),
                },
                **d.errors("400", "404", "413", "415", "429", "503"),
            },
        },
    }
