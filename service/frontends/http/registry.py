"""The front-end registry: what each front-end declares, and which one owns a URL.

Each front-end (``service/frontends/rest``, ``oip``, ``ui``, and ``docs.py``) declares one
:class:`FrontEnd`: its blueprints, its URL prefix, how its error bodies look, the hints it adds
to domain errors, its open and probe routes, and its part of the OpenAPI document. ``create_app``
puts them in a :class:`FrontEnds` and stores it on the app. Authentication, the access log, error
rendering, the 404 hint and the OpenAPI document read the registry, so no front-end imports another,
and a new protocol is one more entry.
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

# (code, message, request id) → the JSON body of an error, in the front-end's own shape.
ErrorBody = Callable[[str, str, "str | None"], dict]
# (data plane, describe) → the front-end's OpenAPI operations, keyed by Flask endpoint name.
Operations = Callable[["DataPlane", "Describe"], dict[str, dict]]


@dataclass(frozen=True)
class FrontEnd:
    """One protocol the service speaks. Only ``title`` and ``blueprints`` are required.

    A front-end with an ``error_body`` is an API: it renders the errors of the URLs it owns (under
    ``prefix``; the one API without a prefix owns every other URL). One without is a page or a
    document, whose errors the API that owns its URLs renders.
    """

    title: str  # as a 404 names it: "the Open Inference Protocol"
    blueprints: tuple[Blueprint, ...]
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
        apis = [f for f in self.all if f.error_body is not None]
        roots = [f for f in apis if not f.prefix]
        if len(roots) != 1:
            raise ValueError(f"exactly one API front-end must own the URLs without a prefix, not {len(roots)}")
        prefixes = [f.prefix for f in self.all if f.prefix]
        if len(prefixes) != len(set(prefixes)):
            raise ValueError(f"two front-ends share a prefix: {prefixes}")
        self.root = roots[0]
        self._prefixed = [f for f in apis if f.prefix]
        self.probe_routes = frozenset().union(*(f.probe_routes for f in self.all))
        self.open_routes = self.probe_routes.union(*(f.open_routes for f in self.all))
        self.quiet_routes = self.probe_routes.union(*(f.quiet_routes for f in self.all))
        self.asset_prefixes = tuple(p for f in self.all for p in f.asset_prefixes)

    def owner(self, path: str) -> FrontEnd:
        """The API whose words the answer to ``path`` is in: the one whose prefix owns it, else the root's."""
        return next((f for f in self._prefixed if f.owns(path)), self.root)

    def is_open(self, path: str) -> bool:
        """Whether ``path`` needs no key (probes, metrics, the page, the document and their files)."""
        return path in self.open_routes or path.startswith(self.asset_prefixes)

    def is_asset(self, path: str) -> bool:
        return path.startswith(self.asset_prefixes)

    def routes_hint(self, front_end: FrontEnd, url_map: Map) -> str:
        """What a 404 lists for ``front_end``: its own hint, or its routes by method, read from ``url_map``,
        and where the other APIs live."""
        if front_end.routes_hint is not None:
            return front_end.routes_hint
        by_method: dict[str, list[str]] = {"POST": [], "GET": []}
        for rule in url_map.iter_rules():
            # Other APIs have hints of their own; the page's assets and the docs' files are not endpoints.
            if rule.arguments or any(other.owns(rule.rule) for other in self._prefixed):
                continue
            for method in by_method:
                if method in rule.methods:
                    by_method[method].append(rule.rule.rstrip("/") or "/")
        listed = "; ".join(f"{method} {', '.join(rules)}" for method, rules in by_method.items() if rules)
        elsewhere = "".join(f"; {other.title} under {other.prefix}" for other in self._prefixed)
        return f"endpoints: {listed}{elsewhere}"
