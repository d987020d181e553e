"""Bounds on what clients name, and how their strings are quoted back.

Every name, id and string a client sends has a maximum length (:data:`MAX_NAME_CHARS`), checked
by each front-end as it parses, so that a 19 MB output name is refused at once rather than
matched against every layer and echoed back in full. Error messages quote client text through
:func:`shown`, which cuts it short.
"""

from __future__ import annotations

from service.core.errors import InvalidRequest

# Longer than any layer name of any model (the longest shipped one is under 60), model name or request id.
MAX_NAME_CHARS = 256


def shown(text: object, limit: int = 80) -> str:
    """``repr(text)``, cut to about ``limit`` characters with the full length said: safe to put in a message."""
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def check_length(what: str, text: str, limit: int = MAX_NAME_CHARS) -> str:
    """``text``, or InvalidRequest naming ``what`` when it is longer than ``limit`` characters."""
    if len(text) > limit:
        raise InvalidRequest(f"{what} {shown(text)} is longer than {limit} characters")
    return text


def listed(names: list[str], count: int = 5, limit: int = 40) -> str:
    """``a, b, c``: at most ``count`` names, each long one cut short by :func:`shown`, and how many more."""
    shown_names = [name if len(name) <= limit else shown(name, limit) for name in names[:count]]
    more = f" and {len(names) - count} more" if len(names) > count else ""
    return ", ".join(shown_names) + more


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name: a library's error as one line of ours."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
