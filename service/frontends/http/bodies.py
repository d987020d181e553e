"""The images of an HTTP request: a raw body, multipart ``image`` parts, or JSON with base64 strings;
and, for the Open Inference Protocol, the whole body with its Content-Encoding undone.

Every way of sending images is read here, with the limits enforced before the expensive part:
the body size (413, also for chunked bodies), the number of images (413, counted before any
part is read or any base64 decoded), and a malformed body (400, never a 5xx).
"""

from __future__ import annotations

import binascii
import zlib
from contextlib import contextmanager

import orjson
import pybase64
from flask import current_app, request
from werkzeug.exceptions import HTTPException

from service.core.errors import InvalidRequest, ServiceError, TooLarge, TooManyImages, UnsupportedMediaType

RAW_TYPES = ("application/octet-stream", "")
# Most values one JSON body may hold. Parsing makes a Python object of each (a 16 MB body of numbers
# took 269 MB), so they are counted first, cheaply: a value is followed by a comma, but the last of a list.
MAX_JSON_VALUES = 1_000_000


def read_images(max_images: int) -> list[bytes]:
    """The request's images, in order, from a raw body, multipart ``image`` parts, or JSON base64."""
    mimetype = request.mimetype
    if mimetype.startswith("image/") or mimetype in RAW_TYPES:
        images = [_read_body()]
        if not images[0]:
            raise InvalidRequest("the request body is empty; send the image bytes as the body")
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
        raise InvalidRequest("the request holds no image")
    return images


def check_image_count(count: int, max_images: int) -> None:
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
        raise InvalidRequest(f"a multipart body needs one or more file parts named 'image'{found}")
    check_image_count(len(parts), max_images)  # before reading the parts
    return [part.read() for part in parts]


def parse_json(data: bytes, what: str = "JSON body", hint: str = "send the images as base64 strings") -> object:
    """``data`` parsed, after the value-count guard every JSON body goes through (413 past
    :data:`MAX_JSON_VALUES`, saying ``hint``); InvalidRequest when it does not parse."""
    if len(data) > MAX_JSON_VALUES and data.count(b",") >= MAX_JSON_VALUES:
        raise TooLarge(f"over {MAX_JSON_VALUES:,} values in the {what}; {hint}")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the {what} does not parse: {exc}") from None


def _json_images(max_images: int) -> list[bytes]:
    body = parse_json(_read_body())
    encoded = body.get("images") if isinstance(body, dict) else None
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise InvalidRequest('a JSON body must be {"images": ["<base64>", ...]}')
    check_image_count(len(encoded), max_images)  # before decoding the base64
    return [decode_base64(text, f"images[{index}]") for index, text in enumerate(encoded)]


def decode_base64(text: str, where: str) -> bytes:
    """Standard base64, or a ``data:`` URL as browsers write it; InvalidRequest naming ``where`` otherwise."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{where} is not valid base64") from None


def body_limit_error() -> TooLarge:
    limit = current_app.extensions["layertap.settings"].max_body_bytes
    return TooLarge(f"the request body is over {limit:,} bytes (LAYERTAP_MAX_BODY_BYTES)")


def read_decoded_body() -> bytes:
    """The whole body with its ``Content-Encoding`` (gzip or deflate) undone; 413 when either the sent or the
    decompressed body is over the limit, so that a small compressed bomb cannot expand in memory."""
    data = _read_body()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"Content-Encoding {encoding[:50]!r} is not supported; send gzip, deflate or none")
    limit = current_app.extensions["layertap.settings"].max_body_bytes
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib ("deflate" in HTTP), told by the header
    try:
        decoded = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"the {encoding} body does not decompress: {exc}") from None
    if len(decoded) > limit:
        raise TooLarge(f"the decompressed request body is over {limit:,} bytes (LAYERTAP_MAX_BODY_BYTES)")
    if not inflater.eof:
        raise InvalidRequest(f"the {encoding} body is truncated")
    if inflater.unused_data:
        raise InvalidRequest(f"{len(inflater.unused_data)} bytes follow the {encoding} data")
    return decoded


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
    except (HTTPException, ServiceError):  # a ServiceError: the upload gate's 408 for a body that stalled
        raise
    except OSError as exc:
        if exc.errno is not None:  # the server's own trouble (disk full spooling an upload), not the client's
            raise
        raise InvalidRequest(f"the request body could not be read: {type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - gunicorn and werkzeug raise their own parse errors
        raise InvalidRequest(f"the request body could not be read: {type(exc).__name__}") from None
