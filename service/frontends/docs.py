"""The OpenAPI 3.1 description of both front-ends, served at ``/openapi.json`` and rendered at ``/docs``.

Generated wherever the code knows the answer:

- paths, methods and path parameters from the Flask app's routes; a route that is not described
  here makes :func:`build_spec` fail, so no route goes undocumented and none is documented twice;
- every body's schema from the pydantic models that define it: service/frontends/rest/messages.py (the
  layertap API) and service/frontends/oip/schema.py (the Open Inference Protocol);
- enums and limits from the modules and settings that own them (pools, encodings, the served
  models, the image limits);
- the bearer scheme only when ``LAYERTAP_API_KEY`` is set, on exactly the operations that check
  it (service/frontends/http/auth.py leaves probes, metrics and this document open).

What is written here is what no code says: summaries, parameter descriptions and which statuses
each operation answers. schemathesis drives the running service with this document and checks
every response against it (tests/integration/test_contract.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from flask import Blueprint, Response, current_app
from pydantic.json_schema import models_json_schema

from service import __version__
from service.dataplane.pooling import POOLS
from service.explain.methods import METHODS
from service.frontends.http.auth import OPEN_ENDPOINTS
from service.frontends.http.responses import TIMING_HEADERS, json_response
from service.frontends.oip import openapi as v2_operations
from service.frontends.oip import routes as oip
from service.frontends.oip import schema as v2
from service.frontends.rest import messages
from service.frontends.rest.explain import DEFAULT_STEPS, FORMATS
from service.frontends.rest.routes import BOOLEANS, ENCODINGS
from service.modeling.shapes import MAX_BATCH, MAX_SIDE

if TYPE_CHECKING:
    from werkzeug.routing import Map

    from service.dataplane.plane import DataPlane

docs = Blueprint("docs", __name__)

MESSAGES = (
    messages.Features,
    messages.Explanations,
    messages.Shapes,
    messages.Status,
    messages.Labels,
    messages.Info,
    messages.Error,
    v2.InferenceRequest,
    v2.InferenceResponse,
    v2.ServerMetadata,
    v2.ModelMetadata,
    v2.ServerLive,
    v2.ServerReady,
    v2.ModelReady,
    v2.ErrorResponse,
)
# What each status means, per front-end (the layertap API's Error body, or the protocol's {"error"}).
STATUS_TEXT = {
    "400": "Bad request: unknown layer or output, bad parameter, undecodable or unsupported image",
    "401": "Missing or wrong API key",
    "404": "Unknown model (or version)",
    "413": "Body over LAYERTAP_MAX_BODY_BYTES, an image over LAYERTAP_MAX_PIXELS, or too many images",
    "415": "Unsupported content type or content encoding",
    "429": "Overloaded: retry after the Retry-After header's seconds",
    "503": "Not ready, or the request's deadline passed",
}


@docs.get("/openapi.json")
def openapi() -> Response:
    """This document, built once per worker (nothing in it changes while the server runs)."""
    spec = current_app.extensions.get("layertap.openapi")
    if spec is None:
        spec = build_spec(current_app.extensions["layertap.dataplane"], current_app.url_map)
        current_app.extensions["layertap.openapi"] = spec
    return json_response(spec)


@dataclass(frozen=True)
class Describe:
    """What both front-ends' operation tables use: the model's crop, references to schemas, error responses."""

    crop: int
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

    def errors(self, v2_body: bool, *statuses: str) -> dict:
        """Error responses: the Open Inference Protocol's body, or the layertap API's."""
        schema = "ErrorResponse" if v2_body else "Error"
        return {status: {"description": STATUS_TEXT[status], **self.body(schema)} for status in statuses}


def build_spec(plane: DataPlane, url_map: Map) -> dict:
    """The document for this server: its routes, its models, their default layers and input sizes, its limits."""
    describe = Describe(crop=plane.runner(None).entry.preprocessing.crop)
    operations = {**_operations(plane, describe), **v2_operations.operations(describe)}
    protected = plane.settings.api_key is not None
    paths: dict[str, dict] = {}
    for rule in sorted(url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or rule.endpoint.startswith("swagger_ui") or rule.rule.startswith("/ui/"):
            continue  # the debug page's and the docs page's own files
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if rule.endpoint not in operations:
                raise ValueError(
                    f"route {method} {rule.rule} ({rule.endpoint}) is not described in service/frontends/docs.py"
                )
            operation = dict(operations[rule.endpoint])
            versioned = "_version" if "version" in rule.arguments else ""  # one view serves both forms
            operation["operationId"] = rule.endpoint.replace(".", "_") + versioned
            parameters = [_path_parameter(name, plane) for name in sorted(rule.arguments)]
            operation["parameters"] = parameters + operation.get("parameters", [])
            if protected and (plane.settings.auth_all_endpoints or rule.rule not in OPEN_ENDPOINTS):
                operation["security"] = [{"bearer": []}]
                operation["responses"] = {**operation["responses"], **describe.errors(oip.owns(rule.rule), "401")}
            paths.setdefault(path, {})[method.lower()] = operation
    components: dict = {
        "schemas": models_json_schema(
            [(model, "serialization") for model in MESSAGES], ref_template="#/components/schemas/{model}"
        )[1]["$defs"],
        "headers": {
            "RequestId": {"description": "The client's X-Request-ID, or a generated one", "schema": {"type": "string"}},
            "Milliseconds": {"description": "Time spent, in milliseconds", "schema": {"type": "string"}},
            "BatchSize": {"description": "Images in the forward pass it shared", "schema": {"type": "string"}},
        },
    }
    if protected:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "layertap",
            "version": __version__,
            "description": "The true outputs of any named layers of a torchvision model, for uploaded images: "
            "the layertap API, and the Open Inference Protocol (KServe v2) under /v2.",
        },
        "paths": paths,
        "components": components,
    }


def _operations(plane: DataPlane, d: Describe) -> dict[str, dict]:
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
                _query(
                    "layers",
                    {"type": "string", "example": runner.default_layer},
                    "Comma-separated layer names from GET /shapes (default: the model's default layer, "
                    f"{runner.default_layer} for {runner.name})",
                ),
                model,
                _query("pool", {"type": "string", "enum": list(POOLS)}, "Pool each map to one vector per image"),
                _query("normalize", {"type": "string", "enum": list(BOOLEANS)}, "Scale each image's values to norm 1"),
                _query("encoding", {"type": "string", "enum": list(ENCODINGS)}, "Nested JSON lists, or base64 float32"),
            ],
            "requestBody": features_body,
            "responses": {
                "200": {"description": "One entry per layer", "headers": d.answered_headers, **d.body("Features")},
                **d.errors(False, "400", "404", "413", "415", "429", "503"),
            },
        },
        "explain_api.explain": {
            "summary": "Explain each image's class score: a Grad-CAM-family map at a layer, or integrated gradients",
            "parameters": [
                _query("method", {"type": "string", "enum": list(METHODS)}, "How to explain"),
                _query(
                    "layer",
                    {"type": "string"},
                    "CAM methods: a layer with a spatial map (default: the model's last, GET /info lists them)",
                ),
                _query("target", {"type": "integer", "minimum": 0}, "The class to explain (default: the top-1)"),
                _query(
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
                _query("format", {"type": "string", "enum": list(FORMATS)}, "png: the map over the image (one image)"),
                _query("encoding", {"type": "string", "enum": list(ENCODINGS)}, "Nested JSON lists, or base64 float32"),
            ],
            "requestBody": features_body,
            "responses": {
                "200": {
                    "description": "One explanation per image; or, with format=png, the map over the image",
                    "headers": d.answered_headers,
                    "content": {**d.json("Explanations"), "image/png": {"schema": d.binary}},
                },
                **d.errors(False, "400", "404", "413", "415", "429", "503"),
            },
        },
        "api.shapes": {
            "summary": "Every module call, in execution order, with its output shape",
            "parameters": [
                _int_query("height", d.crop, MAX_SIDE),
                _int_query("width", d.crop, MAX_SIDE),
                _int_query("batch", 1, MAX_BATCH),
                model,
            ],
            "responses": {"200": {"description": "Layers", **d.body("Shapes")}, **d.errors(False, "400", "404")},
        },
        "api.health": _probe(d, "Liveness", "The process serves", "The model thread has failed"),
        "api.ready": _probe(d, "Readiness", "Every model loaded and warm", "Loading, draining or failed"),
        "api.info": {
            "summary": "Model, weights, device, dtype, preprocessing, versions and limits",
            "parameters": [model],
            "responses": {"200": {"description": "Service description", **d.body("Info")}, **d.errors(False, "404")},
        },
        "api.labels": {
            "summary": "Class names of the model's classifier outputs (ImageNet weights), or null",
            "parameters": [model],
            "responses": {"200": {"description": "Labels", **d.body("Labels")}, **d.errors(False, "404")},
        },
        "api.metrics_endpoint": {
            "summary": "Prometheus metrics, summed over workers",
            "responses": {"200": {"description": "Prometheus text format", "content": _text("text/plain")}},
        },
        "ui.page": {
            "summary": "The debug page: pick layers, upload an image, see activation maps",
            "responses": {"200": {"description": "HTML", "content": _text("text/html")}},
        },
        "docs.openapi": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
        },
    }


def _path_parameter(name: str, plane: DataPlane) -> dict:
    values = {"model": list(plane.runners), "version": [oip.VERSION]}[name]
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "enum": values}}


def _probe(d: Describe, summary: str, up: str, down: str) -> dict:
    return {
        "summary": summary,
        "responses": {"200": {"description": up, **d.body("Status")}, "503": {"description": down, **d.body("Status")}},
    }


def _text(mimetype: str) -> dict:
    return {mimetype: {"schema": {"type": "string"}}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _int_query(name: str, default: int, maximum: int) -> dict:
    return _query(name, {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}, f"Input {name}")


def _image_list(field: str, item: dict, max_images: int) -> dict:
    return {
        "type": "object",
        "required": [field],
        "properties": {
            field: {"type": "array", "description": f"At most {max_images} images (else 413)", "items": item}
        },
    }
