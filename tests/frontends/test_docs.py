"""The OpenAPI document: valid, complete (every route, nothing more), and its docs page is self-contained."""

from __future__ import annotations

import base64
import re

import jsonschema
import pytest
import schemathesis
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from service.app import create_app
from service.core.settings import Settings
from service.frontends.http.responses import TIMING_HEADERS


def test_document_loads_and_lists_exactly_the_routes(app, client):
    spec = client.get("/openapi.json").json
    schema = schemathesis.openapi.from_dict(spec)
    operations = {(op.method.upper(), op.path) for op in (result.ok() for result in schema.get_all_operations())}
    routes = {
        (method, re.sub(r"<(\w+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(("/docs", "/ui/"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert operations == routes
    assert spec["info"]["version"] == client.get("/info").json["version"]


def test_documented_limits_follow_the_settings(client, plane):
    spec = client.get("/openapi.json").json
    body = spec["paths"]["/features"]["post"]["requestBody"]["content"]
    limit = f"At most {plane.settings.max_images_per_request} images"
    assert body["application/json"]["schema"]["properties"]["images"]["description"].startswith(limit)
    documented = set(spec["paths"]["/features"]["post"]["responses"]["200"]["headers"])
    assert documented == {"X-Request-ID", "X-Batch-Size", *TIMING_HEADERS}
    model = spec["paths"]["/v2/models/{model}/infer"]["post"]["parameters"][0]
    assert model["schema"]["enum"] == list(plane.runners)


def test_real_answers_match_the_documented_schemas(client, photos):
    """The message models are what the front-ends render as plain dicts: real answers checked against them."""
    spec = client.get("/openapi.json").json

    def check(schema: str, body: dict) -> None:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]}
        )
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(body)]
        assert not errors, (schema, errors[:5])

    image = base64.b64encode(photos["rocket.jpg"]).decode()
    features = client.post("/features?layers=layer4,fc&encoding=base64", data=photos["rocket.jpg"])
    check("Features", features.json)
    check("Features", client.post("/features?layers=avgpool", data=photos["rocket.jpg"]).json)
    check("Shapes", client.get("/shapes").json)
    check("Info", client.get("/info").json)
    check("Labels", client.get("/labels").json)
    check("Status", client.get("/ready").json)
    check("Error", client.get("/shapes?height=x").json)
    infer = {"id": "x", "inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": [image]}]}
    check("InferenceResponse", client.post("/v2/models/resnet18/infer", json=infer).json)
    check("ModelMetadata", client.get("/v2/models/resnet18").json)
    check("ServerMetadata", client.get("/v2").json)
    check("ErrorResponse", client.get("/v2/models/nope").json)
    check("InferenceRequest", infer)
    assert not jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/InferenceRequest", "components": spec["components"]}
    ).is_valid({"inputs": "not a list"})


def test_bearer_scheme_only_with_a_key_and_only_where_it_is_checked(client, settings, tmp_path):
    assert "securitySchemes" not in client.get("/openapi.json").json["components"]
    keyed = create_app(Settings(**{**settings.model_dump(), "api_key": "s3cret"}))
    try:
        spec = keyed.test_client().get("/openapi.json").json
    finally:
        keyed.extensions["layertap.dataplane"].close()
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    secured = {path for path, item in spec["paths"].items() for op in item.values() if "security" in op}
    assert "/features" in secured and "/v2/models/{model}/infer" in secured
    assert not secured & {"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready", "/openapi.json"}
    assert "401" in spec["paths"]["/features"]["post"]["responses"]
    assert "ErrorResponse" in str(spec["paths"]["/v2/models/{model}/infer"]["post"]["responses"]["401"])
    validate(spec)  # the secured document is valid too


def test_document_validates_as_openapi_3_1(client):
    """Generators and gateways that validate documents accept it (openapi-spec-validator, not our own reading)."""
    spec = client.get("/openapi.json").json
    validate(spec)
    # The validator is not lenient: the null default an array once declared is refused.
    broken = {**spec, "components": {**spec["components"], "schemas": dict(spec["components"]["schemas"])}}
    request_input = dict(broken["components"]["schemas"]["RequestInput"])
    request_input["properties"] = {**request_input["properties"]}
    request_input["properties"]["data"] = {**request_input["properties"]["data"], "default": None}
    broken["components"]["schemas"]["RequestInput"] = request_input
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_docs_page_uses_only_local_assets(client):
    # No redirect from /docs to /docs/ (it would be built from the Host header): both serve the page.
    assert client.get("/docs").data == client.get("/docs/").data
    page = client.get("/docs/")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    assert not re.search(rb"(src|href)=\"(https?:)?//", page.data), "no asset may come from the internet"
    for asset in re.findall(rb"(?:src|href)=\"(/docs/[^\"]+\.(?:js|css))\"", page.data):
        assert client.get(asset.decode()).status_code == 200, asset
    assert b"/openapi.json" in page.data
