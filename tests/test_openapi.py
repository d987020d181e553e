"""The OpenAPI document: valid, complete (every route, nothing more), and its docs page is self-contained."""

from __future__ import annotations

import re

import schemathesis

from service.api import TIMING_HEADERS


def test_document_loads_and_lists_exactly_the_routes(app, client):
    spec = client.get("/openapi.json").json
    schema = schemathesis.openapi.from_dict(spec)
    operations = {(op.method.upper(), op.path) for op in (result.ok() for result in schema.get_all_operations())}
    routes = {
        (method, rule.rule)
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
    assert documented == {"X-Request-ID", *TIMING_HEADERS}


def test_docs_page_uses_only_local_assets(client):
    assert client.get("/docs").status_code in (301, 308)
    page = client.get("/docs/")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    assert not re.search(rb"(src|href)=\"(https?:)?//", page.data), "no asset may come from the internet"
    for asset in re.findall(rb"(?:src|href)=\"(/docs/[^\"]+\.(?:js|css))\"", page.data):
        assert client.get(asset.decode()).status_code == 200, asset
    assert b"/openapi.json" in page.data
