"""The Open Inference Protocol's operations in the OpenAPI document (service/frontends/docs.py assembles it).

Keyed by Flask endpoint name; paths, path parameters, security and every message schema are
added by the builder from the routes and from service/frontends/oip/schema.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.frontends.http.openapi import Describe


def operations(plane: DataPlane, d: Describe) -> dict[str, dict]:  # noqa: ARG001 - every front-end's signature
    return {
        "oip.server_metadata": {
            "summary": "Server metadata: name, version, protocol extensions",
            "responses": {"200": {"description": "OK", **d.body("ServerMetadata")}},
        },
        "oip.server_live": d.probe(
            "Liveness (Open Inference Protocol)", "The process serves", "The model thread has failed", "ServerLive"
        ),
        "oip.server_ready": d.probe(
            "Readiness (Open Inference Protocol)",
            "Every model loaded and warm",
            "Loading, draining or failed",
            "ServerReady",
        ),
        "oip.model_ready": d.probe("A model's readiness", "Ready", "Loading, draining or failed", "ModelReady", "404"),
        "oip.model_metadata": {
            "summary": "A model's inputs (BYTES, UINT8 or FP32 images) and outputs (every layer, -1: any batch)",
            "responses": {"200": {"description": "OK", **d.body("ModelMetadata")}, **d.errors("404")},
        },
        "oip.infer": {
            "summary": "Outputs (layers) for the images of one input tensor; the binary tensor data extension",
            "parameters": [
                {
                    "name": "Inference-Header-Content-Length",
                    "in": "header",
                    "description": "Bytes of JSON before the binary tensor data (binary tensor data extension)",
                    "schema": {"type": "integer", "minimum": 1},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
                    "application/octet-stream": {"schema": d.binary},
                },
            },
            "responses": {
                "200": {
                    "description": f"One output per requested layer; FP32 input tensors are [N, 3, {d.crop}, {d.crop}]",
                    "headers": d.answered_headers,
                    "content": {
                        **d.json("InferenceResponse"),
                        "application/octet-stream": {"schema": d.binary},
                    },
                },
                **d.errors("400", "404", "413", "415", "429", "503"),
            },
        },
    }
