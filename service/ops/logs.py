"""Structured logs: one JSON object per line, with the request id of the request being served.

Used for the app's own loggers and, through ``logconfig_dict`` in the gunicorn config, for
gunicorn's. ``LAYERTAP_LOG_FORMAT=text`` gives plain lines for a terminal.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

import orjson
from flask import g, has_request_context

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "request_id"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
GUNICORN_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def request_id_from(header: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a fresh one."""
    if header and _REQUEST_ID.match(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record logged while a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        return True


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, request_id, any ``extra=`` fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """Plain lines, with control characters escaped (``\\x0a``): a ``%0a`` in a request's path cannot forge a
    line. A traceback, appended after the message, keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", super().formatMessage(record))


def configure(level: str, fmt: str) -> None:
    """Send the ``layertap`` loggers to stdout in the chosen format (once per process)."""
    logger = logging.getLogger("layertap")
    logger.setLevel(level.upper())
    logger.propagate = False
    if any(getattr(h, "_layertap", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler._layertap = True
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    logger.addHandler(handler)


def gunicorn_logconfig(level: str, fmt: str) -> dict:
    """A logging dictConfig for gunicorn's own loggers, in the same format as the app's, to stdout."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {"()": TextFormatter, "fmt": GUNICORN_TEXT_FORMAT}
    stdout = {"class": "logging.StreamHandler", "formatter": "layertap", "stream": "ext://sys.stdout"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"layertap": formatter},
        "handlers": {"stdout": stdout},
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": ["stdout"], "propagate": False},
            # The app logs each request itself, with its request id (service/app.py).
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }
