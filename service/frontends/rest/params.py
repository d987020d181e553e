"""The layertap API's query arguments: parsed and validated, with a 400 that says what to send instead."""

from __future__ import annotations

from flask import request

from service.core.errors import InvalidRequest
from service.core.text import check_length, shown

ENCODINGS = ("json", "base64")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_layers(raw: str | None, max_layers: int) -> tuple[str, ...] | None:
    """``layers=a,b`` → ("a", "b"); omitted → None (the model's default layer). Empty, duplicated or too many: 400."""
    if raw is None:
        return None
    names = [part.strip() for part in raw.split(",")]
    if not any(names):
        raise InvalidRequest("the layers parameter is empty; name one or more layers, e.g. layers=layer4,avgpool")
    if "" in names:
        raise InvalidRequest(f"the layers parameter {shown(raw, 200)} has an empty name (stray comma?)")
    if len(names) > max_layers:
        raise InvalidRequest(f"{len(names)} layers requested; the model has {max_layers}")
    seen: set[str] = set()
    for name in names:
        check_length("layer name", name)
        if name in seen:
            raise InvalidRequest(f"layer {shown(name)} is requested twice")
        seen.add(name)
    return tuple(names)


def choice_arg(name: str, choices: tuple[str, ...]) -> str:
    """A query argument that must be one of ``choices``; absent, the first."""
    value = request.args.get(name, choices[0])
    if value not in choices:
        raise InvalidRequest(f"{name} must be one of {', '.join(choices)}, not {value[:50]!r}")
    return value


def bool_arg(name: str) -> bool:
    """A true/false query argument (also 1/0, yes/no); absent, false."""
    value = request.args.get(name, "false").lower()
    if value not in BOOLEANS:
        raise InvalidRequest(f"{name} must be true or false, not {value[:50]!r}")
    return BOOLEANS[value]


def int_arg(name: str, default: int | None) -> int | None:
    """An integer query argument; absent, ``default``."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, not {raw[:50]!r}") from None
