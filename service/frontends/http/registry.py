"""The front-end registry: what each front-end declares, and which one owns a URL.

Each front-end (``service/frontends/rest``, ``oip``, ``ui``, and ``docs.py``) declares one
:class:`FrontEnd`: its blueprints, its URL prefix, how its error bodies look, the hints it adds
to domain errors, its open and probe routes, and its part of the OpenAPI document. ``create_app``
puts them in a :class:`FrontEnds`, checks that every route sits under its front-end's prefix, and
stores the registry on the app. Authentication, the access log, error rendering, the 404 hint and
the OpenAPI document read the registry, so no front-end imports another.

Adding a protocol (say OpenAI's ``/v1``) is: a subpackage under ``service/frontends/`` with its
routes and a ``FRONT_END``; that entry in ``service/app.py``'s ``FRONT_ENDS``; the subpackage in
pyproject.toml's package list (tests/test_architecture.py checks it) and in the import-linter layer
``rest | oip | ui | docs`` that keeps front-ends apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Blueprint
    from werkzeug.routing import Map

    from service.dataplane.plane import DataPlane
    from service.frontends.http.openapi import Describe

# (code, message, HTTP status, request id) → the JSON body of an error, in the front-end's own shape.
ErrorBody = Callable[[str, str, int, "str | None"], dict]
# (data plane, describe) → the front-end's OpenAPI operations, keyed by Flask endpoint name.
Operations = Callable[["DataPlane", "Describe"], dict[str, dict]]


@dataclass(frozen=True)
class FrontEnd:
    """One protocol the service speaks. Only ``name``, ``title`` and ``blueprints`` are required.

    A front-end with an ``error_body`` is an API: it renders the errors of the URLs it owns (under
    ``prefix``; the one API without a prefix owns every other URL). One without is a page or a
    document, whose errors the API that owns its URLs renders.

    Routes (``probe_routes``, ``open_routes``, ``quiet_routes``) are Flask rules as written in the
    route decorators, so a rule with a parameter (``/v2/models/<model>/ready``) can be one.
    """

    name: str  # short and unique: its errors are logged as layertap.<name>
    title: str  # as a 404 names it: "the Open Inference Protocol"
    blueprints: tuple[Blueprint, ...]
    description: str | None = None  # as the OpenAPI document names it; None: the title
    prefix: str = ""  # "/v2": the URLs it owns; "" owns what no other front-end does
    error_body: ErrorBody | None = None
    error_schema: str | None = None  # the OpenAPI schema of its error body
    hints: Mapping[type[Exception], str] = field(default_factory=dict)  # added to a domain error's message
    routes_hint: str | None = None  # what a 404 under its prefix lists; None: its routes, read from the app
    probe_routes: frozenset[str] = frozenset()  # liveness and readiness: open, and logged only on errors
    open_routes: frozenset[str] = frozenset()  # open without a key (unless LAYERTAP_AUTH_ALL_ENDPOINTS)
    quiet_routes: frozenset[str] = frozenset()  # scraped by machines (metrics): logged only on errors
    asset_prefixes: tuple[str, ...] = ()  # static files: open, and not operations of the OpenAPI document
    path_values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # enums of path parameters, but model
    operations: Operations | None = None
    schemas: tuple[type, ...] = ()  # the pydantic models of its messages, for the OpenAPI document

    def __post_init__(self):
        if self.prefix and (not self.prefix.startswith("/") or self.prefix.endswith("/")):
            raise ValueError(f"a front-end's prefix looks like '/v2', not {self.prefix!r}")
        if (self.error_body is None) != (self.error_schema is None):
            raise ValueError(f"{self.title}: an API declares both error_body and error_schema, a page neither")

    def owns(self, path: str) -> bool:
        """Whether ``path`` is under this front-end's prefix (never, for the one without a prefix)."""
        return bool(self.prefix) and (path == self.prefix or path.startswith(self.prefix + "/"))


class FrontEnds:
    """The app's front-ends, in registration order; exactly one API has no prefix (it owns the rest)."""

    def __init__(self, front_ends: Iterable[FrontEnd]):
        self.all = tuple(front_ends)
        for what, values in (
            ("name", [f.name for f in self.all]),
            ("prefix", [f.prefix for f in self.all if f.prefix]),
        ):
            if len(values) != len(set(values)):
                raise ValueError(f"two front-ends share a {what}: {values}")
        apis = [f for f in self.all if f.error_body is not None]
        roots = [f for f in apis if not f.prefix]
        if len(roots) != 1:
            raise ValueError(f"exactly one API front-end must own the URLs without a prefix, not {len(roots)}")
        self.root = roots[0]
        self.apis = tuple(apis)
        self._prefixed = [f for f in apis if f.prefix]
        self.probe_routes = frozenset().union(*(f.probe_routes for f in self.all))
        self.open_routes = self.probe_routes.union(*(f.open_routes for f in self.all))
        self.quiet_routes = self.probe_routes.union(*(f.quiet_routes for f in self.all))
        self.asset_prefixes = tuple(p for f in self.all for p in f.asset_prefixes)

    def owner(self, path: str) -> FrontEnd:
        """The API whose words the answer to ``path`` is in: the one whose prefix owns it, else the root's."""
        return next((f for f in self._prefixed if f.owns(path)), self.root)

    def is_open(self, rule: str) -> bool:
        """Whether the route ``rule`` (or, unmatched, the path) needs no key: probes, metrics, the page, the document
        and their files."""
        return rule in self.open_routes or self.is_asset(rule)

    def is_asset(self, rule: str) -> bool:
        """Whether ``rule`` is under an asset prefix, by whole path segments: ``/docs`` opens ``/docs`` and
        ``/docs/…``, never ``/docsearch``."""
        return any(
            rule == prefix.rstrip("/") or rule.startswith(prefix.rstrip("/") + "/") for prefix in self.asset_prefixes
        )

    def check_routes(self, url_map: Map) -> None:
        """ValueError for a route of a prefixed front-end outside its prefix, or another's route inside it."""
        by_blueprint = {blueprint.name: f for f in self.all for blueprint in f.blueprints}
        for rule in url_map.iter_rules():
            declared = by_blueprint.get(rule.endpoint.partition(".")[0])
            owner = next((f for f in self._prefixed if f.owns(rule.rule)), None)
            if declared is not None and owner is not None and declared is not owner:
                raise ValueError(f"route {rule.rule} of {declared.title} is under {owner.title}'s prefix")
            if declared is not None and declared.prefix and not declared.owns(rule.rule):
                raise ValueError(f"route {rule.rule} of {declared.title} is outside its prefix {declared.prefix}")

    def routes_hint(self, front_end: FrontEnd, url_map: Map) -> str:
        """What a 404 lists for ``front_end``: its own hint, or its routes by method, read from ``url_map``
        (the root's: every route no prefixed API owns), and where the other APIs live."""
        if front_end.routes_hint is not None:
            return front_end.routes_hint
        by_method: dict[str, list[str]] = {"POST": [], "GET": []}
        for rule in url_map.iter_rules():
            if rule.arguments:
                continue  # the page's assets and the docs' files are not endpoints
            mine = front_end.owns(rule.rule) if front_end.prefix else self.owner(rule.rule) is self.root
            if not mine:
                continue
            for method in by_method:
                if method in rule.methods:
                    by_method[method].append(rule.rule.rstrip("/") or "/")
        listed = "; ".join(f"{method} {', '.join(rules)}" for method, rules in by_method.items() if rules)
        others = [other for other in self.apis if other is not front_end]
        elsewhere = "".join(f"; {other.title} under {other.prefix or '/'}" for other in others if other.prefix)
        return f"endpoints: {listed}{elsewhere}"
