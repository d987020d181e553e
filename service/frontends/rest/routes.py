"""The layertap REST API: parse and validate requests, call the data plane, render with orjson.

Nothing here touches torch. The data plane raises domain errors (``service/core/errors.py``); they
take their HTTP status and ``Retry-After`` from service/frontends/http/responses.py, and this front-end adds
the hints that name its URLs and renders them, like werkzeug's own errors, as
``{"error": {"code", "message", "request_id"}}``. The Open Inference Protocol is the other
front-end (service/frontends/oip/), over the same data plane.
"""

from __future__ import annotations

import base64
import logging
import threading

import numpy as np
from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from service import __version__
from service.core.errors import DeadlineExceeded, InvalidRequest, NotReady, Overloaded, ServiceError, UnknownLayer
from service.dataplane.pooling import POOLS, OutputOptions
from service.frontends.http.bodies import read_images
from service.frontends.http.responses import (
    data_plane,
    expects_continue,
    headers_of,
    http_error,
    json_response,
    status_of,
    timing_headers,
    unexpected_error,
)
from service.frontends.oip import routes as oip_routes
from service.ops import metrics

log = logging.getLogger("layertap.api")

api = Blueprint("api", __name__)


ENCODINGS = ("json", "base64")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


# What to add to a domain error's message in this protocol's words.
HINTS: dict[type[Exception], str] = {
    UnknownLayer: "GET /shapes lists them all",
    NotReady: "retry when GET /ready answers 200",
    DeadlineExceeded: "LAYERTAP_REQUEST_TIMEOUT_S",
    Overloaded: "LAYERTAP_MAX_QUEUE_IMAGES",
}


# ---- endpoints ---------------------------------------------------------------------------
@api.post("/features")
def features() -> Response:
    plane = data_plane()
    model = request.args.get("model")
    layers = parse_layers(request.args.get("layers"), max_layers=len(plane.runner(model).layers))
    options = OutputOptions(pool=choice_arg("pool", POOLS), normalize=_bool_arg("normalize"))
    encoding = choice_arg("encoding", ENCODINGS)
    plane.check(model, layers, options)  # before reading the body: a typo costs no upload decode
    # Under overload neither does a refusal: room is held before the body is read.
    with plane.admit(model, wait=not expects_continue()) as ticket:
        images = read_images(plane.settings.max_images_per_request)
        result = plane.extract(images, layers, options, model, ticket)
    body = {
        "model": result.model,
        "weights": result.weights,
        "features": {name: encode_feature(array, encoding) for name, array in result.features.items()},
    }
    return json_response(body, headers=timing_headers(result.timings, g.started))


def encode_feature(array: np.ndarray, encoding: str) -> dict:
    """An array as the API returns it: its shape, and its values as nested lists or base64 float32."""
    return _base64_feature(array) if encoding == "base64" else _json_feature(array)


def _json_feature(array: np.ndarray) -> dict:
    return {"shape": list(array.shape), "data": array}


def _base64_feature(array: np.ndarray) -> dict:
    """Raw little-endian float32 bytes: a quarter of the JSON size, and no float parsing for the client."""
    little = array.astype("<f4", copy=False)
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "byteorder": "little",
        "encoding": "base64",
        "data": base64.b64encode(little.tobytes()).decode("ascii"),
    }


@api.get("/shapes")
def shapes() -> Response:
    plane = data_plane()
    crop = plane.runner(request.args.get("model")).entry.preprocessing.crop
    height = int_arg("height", crop)
    width = int_arg("width", crop)
    batch = int_arg("batch", 1)
    runner, calls = plane.shapes(request.args.get("model"), batch, height, width)
    return json_response(
        {
            "model": runner.name,
            "input": {"batch": batch, "channels": 3, "height": height, "width": width},
            "layers": [
                {
                    "name": call.name,
                    "module": call.module,
                    "type": call.type,
                    "call": call.call_index,
                    "calls": call.calls,
                    "shape": list(call.shape) if call.shape is not None else None,
                    "layout": runner.entry.layout_of(call.module),
                }
                for call in calls
            ],
        }
    )


@api.get("/health")
def health() -> Response:
    plane = data_plane()
    if plane.state == "failed":
        return json_response({"status": "failed", "reason": plane.failure}, status=503)
    return json_response({"status": "ok"})


@api.get("/ready")
def ready() -> Response:
    """200 once every model is warm; the body gives each model's state."""
    plane = data_plane()
    body = {"status": plane.state, "models": {name: runner.state for name, runner in plane.runners.items()}}
    if plane.ready:
        return json_response(body)
    return json_response(body, status=503, headers={"Retry-After": "1"})


@api.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(body, mimetype=None, content_type=content_type)


@api.get("/labels")
def labels() -> Response:
    """The class names of the model's classifier outputs, when its weights have them (ImageNet); else null."""
    runner = data_plane().runner(request.args.get("model"))
    categories = runner.weights.categories
    return json_response(
        {"model": runner.name, "classifier": runner.classifier, "labels": categories and list(categories)}
    )


@api.get("/info")
def info() -> Response:
    plane = data_plane()
    settings = plane.settings
    return json_response(
        {
            **plane.describe(request.args.get("model")),
            "version": __version__,
            "threads": threading.active_count(),
            "workers": settings.workers,
            "torch_threads": settings.effective_torch_threads(),
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_pixels": settings.max_pixels,
                "max_images_per_request": settings.max_images_per_request,
                "max_batch_size": settings.max_batch_size,
                "max_batch_delay_ms": settings.max_batch_delay_ms,
                "max_queue_images": settings.max_queue_images,
                "max_queue_wait_ms": settings.max_queue_wait_ms,
                "request_timeout_s": settings.request_timeout_s,
            },
        }
    )


# ---- request parsing -----------------------------------------------------------------------
def parse_layers(raw: str | None, max_layers: int) -> tuple[str, ...] | None:
    """``layers=a,b`` → ("a", "b"); omitted → None (the model's default layer). Empty, duplicated or too many: 400."""
    if raw is None:
        return None
    names = [part.strip() for part in raw.split(",")]
    if not any(names):
        raise InvalidRequest("the layers parameter is empty; name one or more layers, e.g. layers=layer4,avgpool")
    if "" in names:
        raise InvalidRequest(f"the layers parameter {raw[:200]!r} has an empty name (stray comma?)")
    if len(names) > max_layers:
        raise InvalidRequest(f"{len(names)} layers requested; the model has {max_layers}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidRequest(f"layer {name[:200]!r} is requested twice")
        seen.add(name)
    return tuple(names)


def choice_arg(name: str, choices: tuple[str, ...]) -> str:
    """A query argument that must be one of ``choices``; absent, the first."""
    value = request.args.get(name, choices[0])
    if value not in choices:
        raise InvalidRequest(f"{name} must be one of {', '.join(choices)}, not {value[:50]!r}")
    return value


def _bool_arg(name: str) -> bool:
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


# ---- errors --------------------------------------------------------------------------------
def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": g.get("request_id")}}


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    metrics.ERRORS.labels(code).inc()
    return json_response(error_body(code, message), status=status, headers=headers)


def render_service_error(exc: ServiceError) -> Response:
    """A domain error in this protocol: its status, its hint, Retry-After and the bearer challenge."""
    status = status_of(exc)
    message = exc.message
    hint = next((text for kind, text in HINTS.items() if isinstance(exc, kind)), None)
    if hint:
        message = f"{message} ({hint})"
    if status >= 500:
        log.error("%s: %s", exc.code, exc.message)
    return error_response(exc.code, message, status, headers_of(exc))


def render_http_error(exc: HTTPException) -> Response:
    code, message, status, headers = http_error(exc, endpoints_hint())
    return error_response(code, message, status, headers)


def endpoints_hint() -> str:
    """What a 404 lists: this protocol's routes by method, read from the app's routes (built once per app)."""
    hint = current_app.extensions.get("layertap.endpoints_hint")
    if hint is None:
        by_method: dict[str, list[str]] = {"POST": [], "GET": []}
        for rule in current_app.url_map.iter_rules():
            # The v2 protocol has its own hint; the page's assets and the docs' files are not endpoints.
            if rule.arguments or oip_routes.owns(rule.rule):
                continue
            for method in by_method:
                if method in rule.methods:
                    by_method[method].append(rule.rule.rstrip("/") or "/")
        hint = "; ".join(f"{method} {', '.join(rules)}" for method, rules in by_method.items() if rules)
        hint = current_app.extensions["layertap.endpoints_hint"] = (
            f"endpoints: {hint}; the Open Inference Protocol under /v2"
        )
    return hint


def render_unexpected(exc: Exception) -> Response:
    return error_response(*unexpected_error(exc))
