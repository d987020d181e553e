"""The front-end registry on its own: which API owns a URL, what is open, what a 404 lists, what it refuses."""

from __future__ import annotations

import pytest
from flask import Blueprint, Flask

from service.frontends.http.registry import FrontEnd, FrontEnds


def body(code: str, message: str, status: int, request_id: str | None) -> dict:
    return {"code": code, "message": message, "status": status, "request_id": request_id}


def api(name: str, prefix: str = "", **kwargs) -> FrontEnd:
    blueprint = Blueprint(name, __name__)
    return FrontEnd(
        name=name, title=f"the {name} API", blueprints=(blueprint,), prefix=prefix, error_body=body,
        error_schema="Error", **kwargs,
    )  # fmt: skip


def app_with(front_ends: FrontEnds, routes: dict[str, list[tuple[str, str]]]) -> Flask:
    """An app with ``routes`` (rule, method) added to each named front-end's first blueprint."""
    app = Flask(__name__)
    for front_end in front_ends.all:
        blueprint = front_end.blueprints[0]
        for i, (rule, method) in enumerate(routes.get(front_end.name, [])):
            blueprint.add_url_rule(rule, f"view{i}", lambda **_: "", methods=[method])
        app.register_blueprint(blueprint)
    return app


def test_owner_open_and_quiet_routes():
    rest = api("rest", probe_routes=frozenset({"/ready"}), quiet_routes=frozenset({"/metrics"}))
    v2 = api("v2", "/v2", probe_routes=frozenset({"/v2/models/<model>/ready"}))
    page = FrontEnd(name="page", title="the page", blueprints=(Blueprint("page", __name__),), asset_prefixes=("/ui/",))
    docs = FrontEnd(name="docs", title="docs", blueprints=(Blueprint("docs", __name__),), asset_prefixes=("/docs",))
    registry = FrontEnds((rest, v2, page, docs))
    assert registry.owner("/v2") is v2 and registry.owner("/v2/models/x/infer") is v2
    assert registry.owner("/v22") is rest and registry.owner("/features") is rest and registry.owner("/ui/a.js") is rest
    assert registry.is_open("/ready") and registry.is_open("/v2/models/<model>/ready") and registry.is_open("/ui/a.js")
    assert not registry.is_open("/features") and not registry.is_open("/metrics")
    # An asset prefix opens whole path segments only.
    assert registry.is_open("/docs") and registry.is_open("/docs/") and registry.is_open("/docs/swagger.css")
    assert not registry.is_open("/docsearch") and not registry.is_open("/docs.json") and not registry.is_open("/uix")
    assert registry.quiet_routes == {"/ready", "/v2/models/<model>/ready", "/metrics"}


def test_a_404_lists_the_owners_routes_and_where_the_others_live():
    rest, v2 = api("rest"), api("v2", "/v2")
    registry = FrontEnds((rest, v2))
    app = app_with(registry, {"rest": [("/features", "POST"), ("/info", "GET")], "v2": [("/v2/infer", "POST")]})
    assert registry.routes_hint(rest, app.url_map) == "endpoints: POST /features; GET /info; the v2 API under /v2"
    assert registry.routes_hint(v2, app.url_map) == "endpoints: POST /v2/infer"
    written = api("w", "/w", routes_hint="see /w/help")
    assert FrontEnds((rest, written)).routes_hint(written, app.url_map) == "see /w/help"


def test_routes_must_sit_under_their_front_ends_prefix():
    registry = FrontEnds((api("rest"), api("v2", "/v2")))
    registry.check_routes(app_with(registry, {"rest": [("/features", "POST")], "v2": [("/v2/infer", "POST")]}).url_map)
    outside = FrontEnds((api("rest"), api("v2", "/v2")))
    with pytest.raises(ValueError, match="route /infer of the v2 API is outside its prefix /v2"):
        outside.check_routes(app_with(outside, {"v2": [("/infer", "POST")]}).url_map)
    inside = FrontEnds((api("rest"), api("v2", "/v2")))
    with pytest.raises(ValueError, match="route /v2/x of the rest API is under the v2 API's prefix"):
        inside.check_routes(app_with(inside, {"rest": [("/v2/x", "GET")]}).url_map)


@pytest.mark.parametrize(
    ("front_ends", "message"),
    [
        (lambda: (api("a", "/a"),), "exactly one API front-end must own the URLs without a prefix, not 0"),
        (lambda: (api("a"), api("b")), "exactly one API front-end must own the URLs without a prefix, not 2"),
        (lambda: (api("a"), api("a", "/a")), "two front-ends share a name"),
        (lambda: (api("a"), api("b", "/v"), api("c", "/v")), "two front-ends share a prefix"),
    ],
)
def test_a_registry_that_cannot_route_is_refused(front_ends, message):
    with pytest.raises(ValueError, match=message):
        FrontEnds(front_ends())


def test_a_front_end_is_an_api_or_a_page_and_its_prefix_is_a_path():
    with pytest.raises(ValueError, match="looks like '/v2'"):
        api("a", "v2/")
    with pytest.raises(ValueError, match="both error_body and error_schema"):
        FrontEnd(name="a", title="a", blueprints=(), error_body=body)
