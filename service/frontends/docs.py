"""The OpenAPI 3.1 description of every front-end, served at ``/openapi.json`` and rendered at ``/docs``.

Generated wherever the code knows the answer, from the front-end registry
(service/frontends/http/registry.py), so this module imports no other front-end:

- paths, methods and path parameters from the Flask app's routes; a route that no front-end
  describes makes :func:`build_spec` fail, so no route goes undocumented and none twice;
- every body's schema from the pydantic models each front-end declares (``schemas``);
- enums and limits from the modules and settings that own them (the served models, pools,
  encodings, image limits);
- the bearer scheme only when ``LAYERTAP_API_KEY`` is set, on exactly the operations that check
  it (the registry's open routes stay open).

schemathesis drives the running service with this document and checks every response against
it (tests/integration/test_contract.py); tests/frontends/test_docs.py validates the document
itself against the OpenAPI 3.1 schema.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app
from flask_swagger_ui import get_swaggerui_blueprint
from pydantic.json_schema import models_json_schema

from service import __version__
from service.frontends.http.openapi import Describe
from service.frontends.http.registry import FrontEnd, FrontEnds
from service.frontends.http.responses import json_response

if TYPE_CHECKING:
    from werkzeug.routing import Map

    from service.dataplane.plane import DataPlane

docs = Blueprint("docs", __name__)


@docs.get("/openapi.json")
def openapi() -> Response:
    """This document, built once per worker by ``create_app`` (nothing in it changes while the server runs)."""
    return json_response(current_app.extensions["layertap.openapi"])


def _operations(plane: DataPlane, d: Describe) -> dict[str, dict]:  # noqa: ARG001 - every front-end's signature
    return {
        "docs.openapi": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
        },
    }


# Swagger UI from the package's own copy of its assets: nothing is fetched from the internet.
FRONT_END = FrontEnd(
    name="docs",
    title="the OpenAPI document",
    blueprints=(docs, get_swaggerui_blueprint("/docs", "/openapi.json", config={"app_name": "layertap"})),
    open_routes=frozenset({"/openapi.json"}),
    asset_prefixes=("/docs",),
    operations=_operations,
)


def build_spec(plane: DataPlane, url_map: Map, front_ends: FrontEnds) -> dict:
    """The document for this server: its routes, its models, their default layers and input sizes, its limits."""
    crop = plane.runner(None).entry.preprocessing.crop
    describes: dict[str, Describe] = {}  # by front-end name: error responses in the body of the URL's owner
    operations: dict[str, tuple[dict, FrontEnd]] = {}
    for front_end in front_ends.all:
        owner = front_ends.owner(front_end.prefix or "/") if front_end.error_body is None else front_end
        describe = describes.setdefault(owner.name, Describe(crop=crop, error_schema=owner.error_schema))
        if front_end.operations is not None:
            operations.update({k: (v, front_end) for k, v in front_end.operations(plane, describe).items()})
    protected = plane.settings.api_key is not None
    paths: dict[str, dict] = {}
    for rule in sorted(url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static" or front_ends.is_asset(rule.rule):
            continue  # the debug page's and the docs page's own files
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if rule.endpoint not in operations:
                raise ValueError(
                    f"route {method} {rule.rule} ({rule.endpoint}) is described by no front-end's operations"
                )
            described, front_end = operations[rule.endpoint]
            operation = dict(described)
            versioned = "_version" if "version" in rule.arguments else ""  # one view serves both forms
            operation["operationId"] = rule.endpoint.replace(".", "_") + versioned
            parameters = [_path_parameter(name, plane, front_end) for name in sorted(rule.arguments)]
            operation["parameters"] = parameters + operation.get("parameters", [])
            if protected and (plane.settings.auth_all_endpoints or not front_ends.is_open(rule.rule)):
                owner = front_ends.owner(rule.rule)
                operation["security"] = [{"bearer": []}]
                operation["responses"] = {**operation["responses"], **describes[owner.name].errors("401")}
            paths.setdefault(path, {})[method.lower()] = operation
    messages = [model for front_end in front_ends.all for model in front_end.schemas]
    components: dict = {
        "schemas": models_json_schema(
            [(model, "serialization") for model in messages], ref_template="#/components/schemas/{model}"
        )[1]["$defs"],
        "headers": {
            "RequestId": {"description": "The client's X-Request-ID, or a generated one", "schema": {"type": "string"}},
            "Milliseconds": {"description": "Time spent, in milliseconds", "schema": {"type": "string"}},
            "BatchSize": {"description": "Images in the forward pass it shared", "schema": {"type": "string"}},
        },
    }
    if protected:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    apis = [(f.description or f.title) + (f" under {f.prefix}" if f.prefix else "") for f in front_ends.apis]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "layertap",
            "version": __version__,
            "description": "The true outputs of any named layers of a torchvision model, for uploaded images: "
            + (", ".join(apis[:-1]) + ", and " if len(apis) > 1 else "")
            + apis[-1]
            + ".",
        },
        "paths": paths,
        "components": components,
    }


def _path_parameter(name: str, plane: DataPlane, front_end: FrontEnd) -> dict:
    values = list(plane.runners) if name == "model" else list(front_end.path_values[name])
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "enum": values}}
