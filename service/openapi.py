"""The OpenAPI 3 description of the HTTP API, served at ``/openapi.json`` and rendered at ``/docs``.

Written by hand, next to the code it describes, and kept true by tests: the route list must match
the Flask app's, and schemathesis drives the running service with inputs generated from this
document, checking every response against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import __version__
from .model_repository import LAYOUTS
from .postprocess import POOLS
from .shapes import MAX_BATCH, MAX_SIDE

if TYPE_CHECKING:
    from .dataplane import DataPlane

_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 0}}


def _nested_numbers() -> dict:
    """A number, or arrays of arrays ... of numbers (JSON Schema cannot say 'of depth len(shape)')."""
    return {"oneOf": [{"type": "number"}, {"type": "array", "items": {"$ref": "#/components/schemas/NestedNumbers"}}]}


def build_spec(plane: DataPlane, timing_headers: tuple[str, ...]) -> dict:
    """The document for this server: its models, their default layers and input sizes, its limits."""
    max_images = plane.settings.max_images_per_request
    max_body_bytes = plane.settings.max_body_bytes
    runner = plane.runner(None)
    default = runner.entry
    model = {
        "name": "model",
        "in": "query",
        "description": f"A served model (default {plane.default_model})",
        "schema": {"type": "string", "enum": list(plane.runners), "default": plane.default_model},
    }
    error_statuses = {
        "400": "Bad request: unknown layer, bad parameter, undecodable or unsupported image",
        "404": "Unknown model",
        "401": "Missing or wrong API key (only when LAYERTAP_API_KEY is set)",
        "413": f"Body over {max_body_bytes:,} bytes, image over the pixel limit, or more than {max_images} images",
        "415": "Unsupported content type",
        "429": "Overloaded: retry after the Retry-After header's seconds",
        "503": "Model not ready, or the request's deadline passed",
    }
    errors = {status: {"description": text, "content": _json_ref("Error")} for status, text in error_statuses.items()}
    request_id = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "layertap",
            "version": __version__,
            "description": "The true outputs of any named layers of a torchvision model, for uploaded images.",
        },
        "paths": {
            "/features": {
                "post": {
                    "summary": "Outputs of the named layers for one or more images",
                    "operationId": "features",
                    "parameters": [
                        {
                            "name": "layers",
                            "in": "query",
                            "description": "Comma-separated layer names from GET /shapes (default: the model's "
                            f"default layer, {runner.default_layer} for {default.name})",
                            "schema": {"type": "string", "example": runner.default_layer},
                        },
                        model,
                        {"name": "pool", "in": "query", "schema": {"type": "string", "enum": list(POOLS)}},
                        {
                            "name": "normalize",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]},
                        },
                        {"name": "encoding", "in": "query", "schema": {"type": "string", "enum": ["json", "base64"]}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "image/*": {"schema": {"type": "string", "format": "binary"}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {
                                            "type": "array",
                                            "description": f"One part per image, at most {max_images} (else 413)",
                                            "items": {"type": "string", "format": "binary"},
                                        }
                                    },
                                }
                            },
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["images"],
                                    "properties": {
                                        "images": {
                                            "type": "array",
                                            "description": f"At most {max_images} images (else 413)",
                                            "items": {"type": "string", "format": "byte", "description": "base64"},
                                        }
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "One entry per requested layer, in request order",
                            "headers": {
                                **request_id,
                                **{h: {"$ref": "#/components/headers/Milliseconds"} for h in timing_headers},
                            },
                            "content": _json_ref("Features"),
                        },
                        **errors,
                    },
                }
            },
            "/shapes": {
                "get": {
                    "summary": "Every module call, in execution order, with its output shape",
                    "operationId": "shapes",
                    "parameters": [
                        _int_query("height", default.preprocessing.crop, MAX_SIDE),
                        _int_query("width", default.preprocessing.crop, MAX_SIDE),
                        _int_query("batch", 1, MAX_BATCH),
                        model,
                    ],
                    "responses": {
                        "200": {"description": "The layer table", "content": _json_ref("Shapes")},
                        "400": errors["400"],
                        "401": errors["401"],
                        "404": errors["404"],
                    },
                }
            },
            "/health": _probe("Liveness", "health", up="The process serves", down="The model thread has failed"),
            "/ready": _probe("Readiness", "ready", up="Model loaded and warm", down="Loading, draining or failed"),
            "/info": {
                "get": {
                    "summary": "Model, weights, device, preprocessing, versions and limits",
                    "operationId": "info",
                    "parameters": [model],
                    "responses": {
                        "200": {"description": "Service description", "content": _json_ref("Info")},
                        "401": errors["401"],
                        "404": errors["404"],
                    },
                }
            },
            "/labels": {
                "get": {
                    "summary": "Class names of the model's classifier outputs (ImageNet weights), or null",
                    "operationId": "labels",
                    "parameters": [model],
                    "responses": {
                        "200": {
                            "description": "Labels in the order of the classifier's outputs",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["labels"],
                                        "properties": {
                                            "model": {"type": "string"},
                                            "classifier": {"type": "string"},
                                            "labels": {"type": "array", "items": {"type": "string"}, "nullable": True},
                                        },
                                    }
                                }
                            },
                        },
                        "401": errors["401"],
                        "404": errors["404"],
                    },
                }
            },
            "/": {
                "get": {
                    "summary": "The debug page: pick layers, upload an image, see activation maps",
                    "operationId": "page",
                    "responses": {
                        "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, summed over workers",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "RequestId": {
                    "description": "The client's X-Request-ID, or a generated one",
                    "schema": {"type": "string"},
                },
                "Milliseconds": {"description": "Time spent, in milliseconds", "schema": {"type": "string"}},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "request_id": {"type": "string", "nullable": True},
                            },
                        }
                    },
                },
                "NestedNumbers": _nested_numbers(),
                "Feature": {
                    "type": "object",
                    "required": ["shape", "data"],
                    "properties": {
                        "shape": _SHAPE,
                        "data": {
                            "description": "Nested lists matching shape, or base64 of little-endian float32",
                            "oneOf": [
                                {"type": "array", "items": {"$ref": "#/components/schemas/NestedNumbers"}},
                                {"type": "string"},
                            ],
                        },
                        "dtype": {"type": "string", "enum": ["float32"]},
                        "byteorder": {"type": "string", "enum": ["little"]},
                        "encoding": {"type": "string", "enum": ["base64"]},
                    },
                },
                "Features": {
                    "type": "object",
                    "required": ["model", "weights", "features"],
                    "properties": {
                        "model": {"type": "string"},
                        "weights": {"type": "string"},
                        "features": {
                            "type": "object",
                            "additionalProperties": {"$ref": "#/components/schemas/Feature"},
                        },
                    },
                },
                "Shapes": {
                    "type": "object",
                    "required": ["model", "input", "layers"],
                    "properties": {
                        "model": {"type": "string"},
                        "input": {
                            "type": "object",
                            "properties": {k: {"type": "integer"} for k in ("batch", "channels", "height", "width")},
                        },
                        "layers": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "module", "type", "call", "calls", "shape"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "module": {"type": "string"},
                                    "type": {"type": "string"},
                                    "call": {"type": "integer"},
                                    "calls": {"type": "integer"},
                                    "shape": {**_SHAPE, "nullable": True},
                                    "layout": {"type": "string", "enum": list(LAYOUTS)},
                                },
                            },
                        },
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string"},
                        "reason": {"type": "string", "nullable": True},
                        "models": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
                "Info": {
                    "type": "object",
                    "required": ["model", "weights", "device", "dtype", "preprocessing", "version", "limits"],
                    "properties": {
                        "model": {"type": "string"},
                        "models": {"type": "array", "items": {"type": "string"}},
                        "default_model": {"type": "string"},
                        "default_layer": {"type": "string"},
                        "classifier": {"type": "string"},
                        "weights": {"type": "string"},
                        "device": {"type": "string"},
                        "dtype": {"type": "string"},
                        "preprocessing": {"type": "object"},
                        "version": {"type": "string"},
                        "limits": {"type": "object", "additionalProperties": {"type": "number"}},
                    },
                },
            },
        },
    }


def _probe(summary: str, operation_id: str, up: str, down: str) -> dict:
    """A probe endpoint: GET, a Status body with 200 when ``up`` and 503 when ``down``."""
    return {
        "get": {
            "summary": summary,
            "operationId": operation_id,
            "responses": {
                "200": {"description": up, "content": _json_ref("Status")},
                "503": {"description": down, "content": _json_ref("Status")},
            },
        }
    }


def _json_ref(schema: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _int_query(name: str, default: int, maximum: int) -> dict:
    return {
        "name": name,
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    }
