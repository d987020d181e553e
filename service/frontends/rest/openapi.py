"""The layertap API's operations in the OpenAPI document (service/frontends/docs.py assembles it).

Keyed by Flask endpoint name; paths, path parameters, security and every message schema are
added by the builder from the routes and from service/frontends/rest/schema.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.dataplane.pooling import POOLS
from service.explain.methods import METHODS
from service.frontends.http.openapi import Describe, int_query, query, text
from service.frontends.rest.explain import DEFAULT_STEPS, FORMATS
from service.frontends.rest.params import BOOLEANS, ENCODINGS
from service.modeling.shapes import MAX_BATCH, MAX_SIDE

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane


def operations(plane: DataPlane, d: Describe) -> dict[str, dict]:
    """The layertap API's operations, by Flask endpoint name (path parameters and security come from the route)."""
    runner = plane.runner(None)
    max_images = plane.settings.max_images_per_request
    model = {
        "name": "model",
        "in": "query",
        "description": f"A served model (default {plane.default_model})",
        "schema": {"type": "string", "enum": list(plane.runners), "default": plane.default_model},
    }
    images = d.binary
    features_body = {
        "required": True,
        "content": {
            "image/*": {"schema": images},
            "application/octet-stream": {"schema": images},
            "multipart/form-data": {"schema": _image_list("image", images, max_images)},
            "application/json": {
                "schema": _image_list("images", {"type": "string", "contentEncoding": "base64"}, max_images)
            },
        },
    }
    return {
        "api.features": {
            "summary": "Outputs of the named layers for one or more images",
            "parameters": [
                query(
                    "layers",
                    {"type": "string", "example": runner.default_layer},
                    "Comma-separated layer names from GET /shapes (default: the model's default layer, "
                    f"{runner.default_layer} for {runner.name})",
                ),
                model,
                query("pool", {"type": "string", "enum": list(POOLS)}, "Pool each map to one vector per image"),
                query("normalize", {"type": "string", "enum": list(BOOLEANS)}, "Scale each image's values to norm 1"),
                query("encoding", {"type": "string", "enum": list(ENCODINGS)}, "Nested JSON lists, or base64 float32"),
            ],
            "requestBody": features_body,
            "responses": {
                "200": {"description": "One entry per layer", "headers": d.answered_headers, **d.body("Features")},
                **d.errors("400", "404", "413", "415", "429", "503"),
            },
        },
        "explain_api.explain": {
            "summary": "Explain each image's class score: a Grad-CAM-family map at a layer, or integrated gradients",
            "parameters": [
                query("method", {"type": "string", "enum": list(METHODS)}, "How to explain"),
                query(
                    "layer",
                    {"type": "string"},
                    "CAM methods: a layer with a spatial map (default: the model's last, GET /info lists them)",
                ),
                query("target", {"type": "integer", "minimum": 0}, "The class to explain (default: the top-1)"),
                query(
                    "steps",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": plane.settings.max_explain_steps,
                        "default": DEFAULT_STEPS,
                    },
                    "integrated_gradients: points on the path from a black image",
                ),
                model,
                query("format", {"type": "string", "enum": list(FORMATS)}, "png: the map over the image (one image)"),
                query("encoding", {"type": "string", "enum": list(ENCODINGS)}, "Nested JSON lists, or base64 float32"),
            ],
            "requestBody": features_body,
            "responses": {
                "200": {
                    "description": "One explanation per image; or, with format=png, the map over the image",
                    "headers": d.answered_headers,
                    "content": {**d.json("Explanations"), "image/png": {"schema": d.binary}},
                },
                **d.errors("400", "404", "413", "415", "429", "503"),
            },
        },
        "api.shapes": {
            "summary": "Every module call, in execution order, with its output shape",
            "parameters": [
                int_query("height", d.crop, MAX_SIDE),
                int_query("width", d.crop, MAX_SIDE),
                int_query("batch", 1, MAX_BATCH),
                {
                    "name": "ops",
                    "in": "query",
                    "schema": {"type": "boolean", "default": False},
                    "description": "Also list the op layers (functions and tensor methods, named as torch.fx names "
                    "them: layer1.0.add, flatten), each marked function or method",
                },
                model,
            ],
            "responses": {"200": {"description": "Layers", **d.body("Shapes")}, **d.errors("400", "404")},
        },
        "api.health": d.probe("Liveness", "The process serves", "The model thread has failed", "Status"),
        "api.ready": d.probe("Readiness", "Every model loaded and warm", "Loading, draining or failed", "Status"),
        "api.info": {
            "summary": "Model, weights, device, dtype, preprocessing, versions and limits",
            "parameters": [model],
            "responses": {"200": {"description": "Service description", **d.body("Info")}, **d.errors("404")},
        },
        "api.labels": {
            "summary": "Class names of the model's classifier outputs (ImageNet weights), or null",
            "parameters": [model],
            "responses": {"200": {"description": "Labels", **d.body("Labels")}, **d.errors("404")},
        },
        "api.metrics_endpoint": {
            "summary": "Prometheus metrics, summed over workers",
            "responses": {"200": {"description": "Prometheus text format", "content": text("text/plain")}},
        },
    }


def _image_list(field: str, item: dict, max_images: int) -> dict:
    return {
        "type": "object",
        "required": [field],
        "properties": {
            field: {"type": "array", "description": f"At most {max_images} images (else 413)", "items": item}
        },
    }
