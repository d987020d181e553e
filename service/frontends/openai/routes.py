"""OpenAI's embeddings API: parse, validate, call the data plane, render, as the ``openai`` client expects.

``POST /v1/embeddings`` takes OpenAI's body. Each string of ``input`` is one of:

- an image, as a data URL (``data:image/png;base64,...``): decoded with the same limits and errors
  as ``/features``, and embedded as the model's default answer (its ``embedding``, or the layer
  ``layers`` names, pooled as ``pool`` says), flattened;
- a URL (``http://``, ``https://``): refused, the service never fetches one;
- anything else: a text, embedded by the model's text tower (CLIP, SigLIP), with its own
  tokenizer; a model without one refuses text and names the models that take it.

Vectors are L2-normalized, as OpenAI's are, unless ``normalize`` is false, and returned as numbers
or, with ``encoding_format: base64`` (what the ``openai`` client asks for by default), as base64
of little-endian float32. Images and texts may be mixed in one request; each goes to the model's
thread in batches of its own kind, beside other requests'.

Unlike ``/features``, the model is named in the body, so the body is read before queue room is
taken; it is bounded by ``LAYERTAP_MAX_BODY_BYTES`` and the worker's read deadlines all the same.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pybase64
from flask import Blueprint, Response, g

from service.core.errors import InvalidRequest, UnsupportedMediaType
from service.core.text import shown
from service.dataplane.pooling import OutputOptions
from service.dataplane.timings import Timings
from service.frontends.http.bodies import check_image_count, decode_base64, parse_json, read_decoded_body
from service.frontends.http.responses import data_plane, json_response, timing_headers
from service.frontends.openai.schema import EmbeddingsRequest, parse_request

openai = Blueprint("openai", __name__)

PREFIX = "/v1"
# A data URL as RFC 2397 writes it, base64 only: data:[<type>][;<parameter>]*;base64,<data>
DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?:;[^;,]*)*?;base64,", re.IGNORECASE)
WEB_URL = re.compile(r"https?://", re.IGNORECASE)
CREATED = 0  # OpenAI dates its models; layertap's are files, so every model says 0


@openai.get(f"{PREFIX}/models")
def models() -> Response:
    """The served models, in OpenAI's shape."""
    plane = data_plane()
    return json_response({"object": "list", "data": [_model(plane, name) for name in plane.runners]})


@openai.get(f"{PREFIX}/models/<model>")
def model(model: str) -> Response:
    """One served model; 404 for another name."""
    plane = data_plane()
    return json_response(_model(plane, plane.runner(model).name))


def _model(plane, name: str) -> dict:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": plane.runners[name].entry.source}


@openai.post(f"{PREFIX}/embeddings")
def embeddings() -> Response:
    """One vector per input, in input order: images as data URLs, texts for models with a text tower."""
    plane = data_plane()
    hint = "send fewer inputs per request"
    body = parse_request(parse_json(read_decoded_body(), "embeddings request", hint))
    runner = plane.runner(body.model)  # 404 before anything is decoded
    inputs = [body.input] if isinstance(body.input, str) else body.input
    images, texts = _split(inputs)
    check_image_count(len(images), plane.settings.max_images_per_request)
    if texts and body.layers:
        raise InvalidRequest(
            "layers applies to images only: a text is embedded by the text tower, into the space of the model's "
            "embedding; send texts and images of other layers in separate requests"
        )
    vectors: list[np.ndarray | None] = [None] * len(inputs)
    timings, tokens, release = Timings(), len(images), lambda: None
    try:
        if images:
            layers = (body.layers,) if body.layers else None
            result = plane.extract(
                [data for _, data in images], layers, OutputOptions(body.pool, body.normalize), body.model,
                packed=body.encoding_format == "base64", hold_answer=True,
            )  # fmt: skip
            release = result.release
            (array,) = result.features.values()
            for (index, _), row in zip(images, array.reshape(len(images), -1), strict=True):
                vectors[index] = row
            timings.add(result.timings)
        if texts:
            embedded = plane.embed_text([text for _, text in texts], body.model, body.truncate, body.normalize)
            for (index, _), row in zip(texts, embedded.vectors, strict=True):
                vectors[index] = row
            tokens += sum(embedded.tokens)
            timings.add(embedded.timings)
        _check_dimensions(body, runner.name, vectors)
        encoding_started = time.perf_counter()
        data = [
            {"object": "embedding", "index": index, "embedding": _encoded(vector, body.encoding_format)}
            for index, vector in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        response = json_response({"object": "list", "data": data, "model": runner.name, "usage": usage})
    finally:
        release()
    response.headers.update(timing_headers(timings, g.started, (time.perf_counter() - encoding_started) * 1000))
    return response


def _split(inputs: list[str]) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
    """(index, image bytes) of the data URLs and (index, text) of the rest; URLs are refused."""
    images, texts = [], []
    for index, item in enumerate(inputs):
        if item[:5].lower() == "data:":
            images.append((index, _data_url(item, index)))
        elif WEB_URL.match(item):
            raise InvalidRequest(
                f"input[{index}] is a URL ({shown(item, 60)}); layertap never fetches one: send the image itself "
                "as a data URL (data:image/jpeg;base64,...)"
            )
        else:
            texts.append((index, item))
    return images, texts


def _data_url(item: str, index: int) -> bytes:
    """The bytes of an image data URL; a clear error for another media type or bad base64."""
    match = DATA_URL.match(item)
    if match is None:
        raise InvalidRequest(
            f"input[{index}] is not a base64 data URL ({shown(item, 60)}); write data:image/<type>;base64,<data>"
        )
    media_type = match["type"].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise UnsupportedMediaType(f"input[{index}] is a data URL of {shown(media_type, 40)}, not of an image")
    return decode_base64(item[match.end() :], f"the data URL of input[{index}]")


def _check_dimensions(body: EmbeddingsRequest, model: str, vectors: list[np.ndarray]) -> None:
    size = len(vectors[0])
    if body.dimensions is not None and body.dimensions != size:
        raise InvalidRequest(
            f"dimensions={body.dimensions}, but model {model}'s embeddings have {size} (layertap does not shorten "
            f"them): send {size}, or leave dimensions out"
        )


def _encoded(vector: np.ndarray, encoding_format: str) -> np.ndarray | str:
    if encoding_format == "base64":  # as OpenAI sends it: little-endian float32 bytes
        return pybase64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
