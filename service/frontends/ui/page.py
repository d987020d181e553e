"""The debug page at ``/``: static HTML, CSS and JavaScript from ``static/`` beside this file, nothing from outside.

The page draws each channel of the chosen layers as a heatmap on a canvas, from ``/features``
with ``encoding=base64``, and the top-5 classes when ``/labels`` has ImageNet's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from flask import Blueprint, Response, send_from_directory

from service.frontends.http.openapi import text
from service.frontends.http.registry import FrontEnd

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.frontends.http.openapi import Describe

UI_DIR = Path(__file__).resolve().parent / "static"

ui = Blueprint("ui", __name__)


@ui.get("/")
def page() -> Response:
    return send_from_directory(UI_DIR, "index.html", max_age=0)


@ui.get("/ui/<path:name>")
def asset(name: str) -> Response:
    return send_from_directory(UI_DIR, name, max_age=300)


def _operations(plane: DataPlane, d: Describe) -> dict[str, dict]:  # noqa: ARG001 - every front-end's signature
    return {
        "ui.page": {
            "summary": "The debug page: pick layers, upload an image, see activation maps",
            "responses": {"200": {"description": "HTML", "content": text("text/html")}},
        },
    }


FRONT_END = FrontEnd(
    name="ui",
    title="the debug page",
    blueprints=(ui,),
    open_routes=frozenset({"/"}),
    asset_prefixes=("/ui/",),
    operations=_operations,
)
