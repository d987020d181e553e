"""The application factory: ``create_app(settings)`` builds one Flask app around one engine.

Nothing is built at import time. gunicorn calls ``service.app:create_app()`` in each worker,
after fork, so every worker process owns its own model and model thread; tests call it with
their own :class:`Settings`.
"""

from __future__ import annotations

import logging

from flask import Flask

from .api import api, register_error_handlers
from .engine import Engine
from .model_repository import load_entry
from .settings import Settings
from .weights import resolve_weights

log = logging.getLogger("layertap")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app and start loading its model; ``/ready`` turns 200 once a warm-up pass has run.

    Raises :class:`~service.errors.StartupError` (with a message that says what to change) when the
    model entry or the weights cannot be had.
    """
    settings = settings or Settings()
    _configure_logging(settings.log_level)
    try:
        entry = load_entry(settings.model_repository, settings.model)
    except ValueError as exc:
        from .errors import StartupError

        raise StartupError(str(exc)) from None
    weights = resolve_weights(settings.weights, entry, allow_download=settings.allow_download, seed=settings.seed)
    engine = Engine(settings, entry, weights)

    app = Flask("layertap")
    # One byte over the limit, so that a chunked body past it is seen (api._read_body) rather than cut.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    # Multipart parts without a file name are form fields: let them be as large as a body.
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    app.extensions["layertap.engine"] = engine
    app.extensions["layertap.settings"] = settings
    app.register_blueprint(api)
    register_error_handlers(app)
    engine.start()
    return app


def _configure_logging(level: str) -> None:
    root = logging.getLogger("layertap")
    root.setLevel(level.upper())
    if not logging.getLogger().handlers and not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
