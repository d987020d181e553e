"""The debug page at ``/``: static HTML, CSS and JavaScript from ``static/`` beside this file, nothing from outside.

The page draws each channel of the chosen layers as a heatmap on a canvas, from ``/features``
with ``encoding=base64``, and the top-5 classes when ``/labels`` has ImageNet's.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

UI_DIR = Path(__file__).resolve().parent / "static"

ui = Blueprint("ui", __name__)


@ui.get("/")
def page() -> Response:
    return send_from_directory(UI_DIR, "index.html", max_age=0)


@ui.get("/ui/<path:name>")
def asset(name: str) -> Response:
    return send_from_directory(UI_DIR, name, max_age=300)
