"""Log lines a client cannot forge."""

from __future__ import annotations

import logging

from service.ops.logs import TEXT_FORMAT, JsonFormatter, TextFormatter


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    rec = logging.LogRecord("layertap.access", logging.INFO, __file__, 1, message, args, exc_info)
    rec.request_id = "r1"
    return rec


def test_text_lines_escape_control_characters_from_the_request():
    line = TextFormatter(TEXT_FORMAT).format(record("%s %s %s", "GET", "/x\n2026-01-01 INFO forged\r\x1b[2J", 404))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert line.endswith("GET /x\\x0a2026-01-01 INFO forged\\x0d\\x1b[2J 404")


def test_a_traceback_keeps_its_lines_and_json_escapes_everything():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    line = TextFormatter(TEXT_FORMAT).format(record("a\nb", exc_info=exc_info))
    assert line.splitlines()[0].endswith("a\\x0ab") and "ValueError: boom" in line.splitlines()[-1]
    assert "\n" not in JsonFormatter().format(record("a\nb", exc_info=exc_info))
