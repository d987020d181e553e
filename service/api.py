"""The HTTP layer: parse and validate requests, call the engine, serialize with orjson.

Nothing here touches torch. Every failure is a :class:`ServiceError` (or a werkzeug HTTP
error) rendered by :func:`register_error_handlers` as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import orjson
from flask import Blueprint, Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from . import __version__, metrics
from .errors import BadRequest, PayloadTooLarge, ServiceError, TooManyImages, UnsupportedMediaType
from .openapi import build_spec
from .postprocess import POOLS, OutputOptions

if TYPE_CHECKING:  # the HTTP layer talks to the engine, and never imports torch itself
    from .engine import Engine

log = logging.getLogger("layertap.api")

api = Blueprint("api", __name__)


DEFAULT_LAYERS = ("avgpool",)
GET_ENDPOINTS = ("/", "/shapes", "/info", "/labels", "/health", "/ready", "/metrics", "/openapi.json", "/docs")
TIMING_HEADERS = ("X-Preprocess-Time", "X-Queue-Time", "X-Inference-Time", "X-Total-Time")
ENCODINGS = ("json", "base64")
BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
RAW_TYPES = ("application/octet-stream", "")


def _engine() -> Engine:
    return current_app.extensions["layertap.engine"]


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


# ---- endpoints ---------------------------------------------------------------------------
@api.post("/features")
def features() -> Response:
    engine = _engine()
    layers = parse_layers(request.args.get("layers"), max_layers=len(engine.layers))
    options = OutputOptions(pool=_choice_arg("pool", POOLS), normalize=_bool_arg("normalize"))
    encoding = _choice_arg("encoding", ENCODINGS)
    engine.validate_layers(layers)  # before reading the body: a typo costs no upload decode
    engine.check_capacity()  # and under overload, neither does a refusal
    images = read_images(engine.settings.max_images_per_request)
    result = engine.extract(images, layers, options)
    encode = _base64_feature if encoding == "base64" else _json_feature
    body = {
        "model": engine.entry.name,
        "weights": engine.weights.label,
        "features": {name: encode(array) for name, array in result.features.items()},
    }
    response = json_response(body)
    timings = result.timings
    response.headers.update(
        {
            "X-Preprocess-Time": f"{timings.preprocess_ms:.2f}",
            "X-Queue-Time": f"{timings.queue_ms:.2f}",
            "X-Inference-Time": f"{timings.inference_ms:.2f}",
            "X-Batch-Size": str(timings.batch_images),
            "X-Total-Time": f"{(time.perf_counter() - g.started) * 1000:.2f}",
        }
    )
    return response


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
    engine = _engine()
    crop = engine.entry.preprocessing.crop
    height = _int_arg("height", crop)
    width = _int_arg("width", crop)
    batch = _int_arg("batch", 1)
    calls = engine.shapes(height, width, batch)
    return json_response(
        {
            "model": engine.entry.name,
            "input": {"batch": batch, "channels": 3, "height": height, "width": width},
            "layers": [
                {
                    "name": call.name,
                    "module": call.module,
                    "type": call.type,
                    "call": call.call_index,
                    "calls": call.calls,
                    "shape": list(call.shape) if call.shape is not None else None,
                }
                for call in calls
            ],
        }
    )


@api.get("/health")
def health() -> Response:
    engine = _engine()
    if engine.state == "failed":
        return json_response({"status": "failed", "reason": engine.failure}, status=503)
    return json_response({"status": "ok"})


@api.get("/ready")
def ready() -> Response:
    engine = _engine()
    body = {"status": "ready" if engine.ready else engine.state}
    if engine.ready:
        return json_response(body)
    return json_response(body, status=503, headers={"Retry-After": "1"})


@api.get("/metrics")
def metrics_endpoint() -> Response:
    body, content_type = metrics.render()
    return Response(body, mimetype=None, content_type=content_type)


@api.get("/labels")
def labels() -> Response:
    """The class names of the fc output, when the weights have them (ImageNet); null otherwise."""
    categories = _engine().weights.categories
    return json_response({"labels": list(categories) if categories else None})


@api.get("/openapi.json")
def openapi() -> Response:
    settings = _engine().settings
    return json_response(build_spec(settings.max_images_per_request, settings.max_body_bytes, TIMING_HEADERS))


@api.get("/info")
def info() -> Response:
    engine = _engine()
    settings = engine.settings
    return json_response(
        {
            **engine.describe(),
            "labels": engine.weights.categories is not None,
            "version": __version__,
            "default_layers": list(DEFAULT_LAYERS),
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_pixels": settings.max_pixels,
                "max_images_per_request": settings.max_images_per_request,
                "max_batch_size": settings.max_batch_size,
                "max_batch_delay_ms": settings.max_batch_delay_ms,
                "max_queue_images": settings.max_queue_images,
                "request_timeout_s": settings.request_timeout_s,
            },
        }
    )


# ---- request parsing -----------------------------------------------------------------------
def parse_layers(raw: str | None, max_layers: int) -> tuple[str, ...]:
    """``layers=a,b`` → ("a", "b"); omitted → avgpool. Empty, duplicated or too many names are a 400."""
    if raw is None:
        return DEFAULT_LAYERS
    names = [part.strip() for part in raw.split(",")]
    if not any(names):
        raise BadRequest("the layers parameter is empty; name one or more layers, e.g. layers=layer4,avgpool")
    if "" in names:
        raise BadRequest(f"the layers parameter {raw[:200]!r} has an empty name (stray comma?)")
    if len(names) > max_layers:
        raise BadRequest(f"{len(names)} layers requested; the model has {max_layers}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadRequest(f"layer {name[:200]!r} is requested twice")
        seen.add(name)
    return tuple(names)


def read_images(max_images: int) -> list[bytes]:
    """The request's images, in order, from a raw body, multipart ``image`` parts, or JSON base64."""
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        images = [_read_body()]
        if not images[0]:
            raise BadRequest("the request body is empty; send the image bytes as the body")
    elif mimetype == "multipart/form-data":
        images = _multipart_images(max_images)
    elif mimetype == "application/json":
        images = _json_images(max_images)
    else:
        raise UnsupportedMediaType(
            f"content type {mimetype!r} is not supported; send the image as the raw body (image/* or "
            "application/octet-stream), as multipart/form-data parts named 'image', or as JSON "
            '{"images": ["<base64>", ...]}'
        )
    if not images:
        raise BadRequest("the request holds no image")
    return images


def _check_image_count(count: int, max_images: int) -> None:
    """A raw body is one image; multipart and JSON bodies are counted here, before their images are read."""
    if count > max_images:
        raise TooManyImages(
            f"{count} images in one request; the limit is {max_images} (LAYERTAP_MAX_IMAGES_PER_REQUEST)"
        )


def _multipart_images(max_images: int) -> list[bytes]:
    if (request.content_length or 0) > current_app.extensions["layertap.settings"].max_body_bytes:
        raise body_limit_error()  # Flask's own limit is one byte higher (see _read_body)
    with _malformed_body_is_400():
        parts = request.files.getlist("image")
    if not parts:
        names = sorted(set(request.files) | set(request.form))
        found = f" (found: {', '.join(names[:10])})" if names else ""
        raise BadRequest(f"a multipart body needs one or more file parts named 'image'{found}")
    _check_image_count(len(parts), max_images)  # before reading the parts
    return [part.read() for part in parts]


def _json_images(max_images: int) -> list[bytes]:
    try:
        body = orjson.loads(_read_body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the JSON body does not parse: {exc}") from None
    encoded = body.get("images") if isinstance(body, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise BadRequest('a JSON body must be {"images": ["<base64>", ...]}')
    _check_image_count(len(encoded), max_images)  # before decoding the base64
    images = []
    for index, text in enumerate(encoded):
        if text.startswith("data:") and "," in text:  # a data: URL, as browsers produce
            text = text.split(",", 1)[1]
        try:
            images.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest(f"images[{index}] is not valid base64") from None
    return images


def body_limit_error() -> PayloadTooLarge:
    limit = current_app.extensions["layertap.settings"].max_body_bytes
    return PayloadTooLarge(f"the request body is over {limit:,} bytes (LAYERTAP_MAX_BODY_BYTES)")


def _read_body() -> bytes:
    """The whole body, or 413. Flask's limit is set one byte higher (see create_app): werkzeug stops a
    chunked body at the limit without complaint, so one byte past it is how an oversized one shows."""
    with _malformed_body_is_400():
        data = request.get_data(cache=False)
    if len(data) > current_app.extensions["layertap.settings"].max_body_bytes:
        raise body_limit_error()
    return data


@contextmanager
def _malformed_body_is_400():
    """A body the server cannot read (bad chunked encoding, a client gone mid-upload) is the client's fault."""
    try:
        yield
    except HTTPException:
        raise
    except OSError as exc:
        if exc.errno is not None:  # the server's own trouble (disk full spooling an upload), not the client's
            raise
        raise BadRequest(f"the request body could not be read: {type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - gunicorn and werkzeug raise their own parse errors
        raise BadRequest(f"the request body could not be read: {type(exc).__name__}") from None


def _choice_arg(name: str, choices: tuple[str, ...]) -> str:
    value = request.args.get(name, choices[0])
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(choices)}, not {value[:50]!r}")
    return value


def _bool_arg(name: str) -> bool:
    value = request.args.get(name, "false").lower()
    if value not in BOOLEANS:
        raise BadRequest(f"{name} must be true or false, not {value[:50]!r}")
    return BOOLEANS[value]


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {raw[:50]!r}") from None


# ---- errors --------------------------------------------------------------------------------
def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": g.get("request_id")}}


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    metrics.ERRORS.labels(code).inc()
    return json_response(error_body(code, message), status=status, headers=headers)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        if exc.status >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return error_response(exc.code, exc.message, exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            error = body_limit_error()
            code, message = error.code, error.message
        elif exc.code == 404:
            message = f"no route {request.path[:200]!r}; endpoints: POST /features, GET {', '.join(GET_ENDPOINTS)}"
        response = error_response(code, message, exc.code or 500)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        return error_response("internal_error", "an internal error occurred; it has been logged", 500)
