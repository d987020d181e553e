"""The OpenAPI document: valid, complete (every route, nothing more), and its docs page is self-contained."""

from __future__ import annotations

import re

import schemathesis

from service.app import create_app
from service.http_shared import TIMING_HEADERS
from service.messages import Features
from service.oip.schema import InferenceRequest
from service.settings import Settings


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


def test_message_schemas_come_from_the_models_that_define_them(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    assert set(schemas["Features"]["properties"]) == set(Features.model_fields)
    assert set(schemas["InferenceRequest"]["required"]) == {"inputs"}
    assert set(schemas["InferenceRequest"]["properties"]) == set(InferenceRequest.model_fields)


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


def test_docs_page_uses_only_local_assets(client):
    assert client.get("/docs").status_code in (301, 308)
    page = client.get("/docs/")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    assert not re.search(rb"(src|href)=\"(https?:)?//", page.data), "no asset may come from the internet"
    for asset in re.findall(rb"(?:src|href)=\"(/docs/[^\"]+\.(?:js|css))\"", page.data):
        assert client.get(asset.decode()).status_code == 200, asset
    assert b"/openapi.json" in page.data
