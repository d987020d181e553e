"""The ``/features`` answer: encoded whole when it is small, layer by layer as it is sent when it is large.

An answer of every layer is hundreds of megabytes once written out (every layer of ConvNeXt V2 for
one image is 55 million values: 290 MB in base64, several times that as JSON numbers). Built whole,
it sits in memory beside the arrays it came from. Sent as it is encoded, one layer at a time, each
layer's array is dropped once written, and the text of only one layer exists at a time.

Small answers (most: a pooled embedding is a few kB) are encoded before the headers go out, and
``X-Serialize-Time`` says how long that took; X-Total-Time includes it. A streamed answer has no
``X-Serialize-Time``: its headers leave before its body is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson
from flask import Response

from service.frontends.http.responses import timing_headers
from service.frontends.rest.arrays import encode_feature

if TYPE_CHECKING:
    from service.dataplane.plane import Extraction

# Above this many values an answer is streamed (as base64, 21 MB; as JSON numbers, about 50 MB).
STREAM_MIN_VALUES = 4_000_000


def features_response(result: Extraction, encoding: str, started: float) -> Response:
    """``{"model", "weights", "features": {layer: encoded}}``, whole or streamed by its size. The answer's room
    among the answers in flight is given back once it is encoded (streamed: written), or the client has gone."""
    values = sum(array.size for array in result.features.values())
    chunks = _chunks(result, encoding)
    if values > STREAM_MIN_VALUES:
        response = Response(chunks, headers=timing_headers(result.timings, started), mimetype="application/json")
        response.call_on_close(result.release)  # a client gone mid-answer: the generator never ends
        return response
    encoding_started = time.perf_counter()
    body = b"".join(chunks)
    serialize_ms = (time.perf_counter() - encoding_started) * 1000
    return Response(body, headers=timing_headers(result.timings, started, serialize_ms), mimetype="application/json")


def _chunks(result: Extraction, encoding: str) -> Iterator[bytes]:
    """The answer's JSON, a layer at a time; each layer's array is let go once it is written."""
    features = result.features
    yield orjson.dumps({"model": result.model, "weights": result.weights})[:-1] + b',"features":{'
    for index, name in enumerate(list(features)):
        array = features.pop(name)
        encoded = orjson.dumps(encode_feature(array, encoding), option=orjson.OPT_SERIALIZE_NUMPY)
        del array
        yield (b"," if index else b"") + orjson.dumps(name) + b":" + encoded
    result.release()  # every array is written: its room among the answers in flight is free
    yield b"}}"
