"""The Open Inference Protocol (KServe v2) front-end: parse, validate, call the data plane, render.

A second thin front-end over the same data plane as the layertap API (service/frontends/rest/routes.py): a v2
request is admitted by the same queue, before its body is read, and its images join the same
batches as ``/features`` requests. Only the wire format differs:

- images arrive as one input tensor (service/frontends/oip/tensors.py), and the requested ``outputs`` are
  layer names, each with its own ``pool``, ``normalize`` and ``binary_data`` parameters;
- errors are ``{"error": "..."}`` with the statuses of service/frontends/http/errors.py;
- bodies may be gzip or deflate compressed, and answers are compressed when the client's
  ``Accept-Encoding`` asks (tritonclient's ``request_compression_algorithm`` and
  ``response_compression_algorithm``).

Each model has one version, ``1``; the ``/versions/{version}`` routes answer for it.
"""

from __future__ import annotations

import gzip
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from flask import Blueprint, Response, g, request

from service import __version__
from service.core.errors import InvalidRequest, UnknownModel
from service.core.text import listed, shown
from service.dataplane.pooling import OutputOptions
from service.frontends.http.bodies import parse_json, read_decoded_body
from service.frontends.http.responses import admitted, data_plane, json_response, readiness, timing_headers
from service.frontends.oip import tensors
from service.frontends.oip.schema import InferenceRequest, parse_request

if TYPE_CHECKING:
    from service.batching.admission import Ticket
    from service.dataplane.plane import DataPlane, Extraction, Options
    from service.runners.runner import ModelRunner

oip = Blueprint("oip", __name__)

PREFIX = "/v2"
VERSION = "1"
EXTENSIONS = ("binary_tensor_data",)
PLATFORM = "pytorch_torchvision"
OUTPUT_PARAMETERS = ("binary_data", "pool", "normalize")
REQUEST_PARAMETERS = ("binary_data_output", "pool", "normalize")
# Request parameters that clients send on their own and that carry nothing for layertap: tritonclient's
# scheduling ones (and its "triton_" prefix), KServe's content_type and headers. Anything else is a typo.
IGNORED_PARAMETERS = ("priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "content_type", "headers")
# Smaller answers are not worth compressing; binary tensors (float32) hardly compress at all.
COMPRESS_MIN_BYTES = 1024


def _runner(plane: DataPlane, model: str, version: str | None) -> ModelRunner:
    """The model's runner, or UnknownModel (404) for an unknown model or a version other than ours."""
    runner = plane.runner(model)
    if version is not None and version != VERSION:
        raise UnknownModel(f"model {model!r} has no version {version[:50]!r}; its only version is {VERSION}")
    return runner


# ---- health and metadata -------------------------------------------------------------------
@oip.get(PREFIX)
def server_metadata() -> Response:
    """Name, version and the protocol extensions this server supports."""
    return json_response({"name": "layertap", "version": __version__, "extensions": list(EXTENSIONS)})


@oip.get(f"{PREFIX}/health/live")
def server_live() -> Response:
    """200 while the process serves; 503 once a model thread has failed."""
    live = data_plane().state != "failed"
    return json_response({"live": live}, status=200 if live else 503)


@oip.get(f"{PREFIX}/health/ready")
def server_ready() -> Response:
    """200 once every model is loaded and warm; 503 while loading, draining or failed."""
    ready = data_plane().ready
    return readiness(ready, {"ready": ready})


@oip.get(f"{PREFIX}/models/<model>/ready")
@oip.get(f"{PREFIX}/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> Response:
    """200 once this model is loaded and warm, else 503."""
    runner = _runner(data_plane(), model, version)
    return readiness(runner.ready, {"name": runner.name, "ready": runner.ready})


@oip.get(f"{PREFIX}/models/<model>")
@oip.get(f"{PREFIX}/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> Response:
    """The three image inputs, and every layer as an output, shaped for the model's input size (-1: any batch)."""
    runner = _runner(data_plane(), model, version)
    crop = runner.entry.preprocessing.crop
    # Three ways to send the images; a request sends exactly one of them, so each is optional.
    inputs = [
        {"name": name, "datatype": datatype, "shape": shape, "parameters": {"content": content, "optional": True}}
        for name, datatype, shape, content in (
            ("images", "BYTES", [-1], "encoded images"),
            ("pixels", "UINT8", [-1, -1, -1, 3], "RGB pixels"),
            ("tensor", "FP32", [-1, 3, crop, crop], "normalized"),
        )
    ]
    outputs = [{"name": c.name, "datatype": "FP32", "shape": [-1, *c.shape[1:]]} for c in runner.layers]
    return json_response(
        {
            "name": runner.name,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {"default_output": runner.default_layer, "weights": runner.weights.label},
        }
    )


# ---- inference -----------------------------------------------------------------------------
@oip.post(f"{PREFIX}/models/<model>/infer")
@oip.post(f"{PREFIX}/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> Response:
    """The requested layers for the images of the request's one input; binary where asked."""
    plane = data_plane()
    runner = _runner(plane, model, version)  # an unknown model or version costs no upload

    def read() -> _Parsed:
        header, binary = tensors.split_body(read_decoded_body(), request.headers.get(tensors.BINARY_HEADER))
        inference = parse_request(_parse_json(header))
        layers, options, binary_outputs = _requested_outputs(inference)
        packed = all(binary_outputs.values())  # every output as binary data, none as JSON numbers
        plane.check(model, layers, options, packed=packed)  # before decoding: a typo costs no image decode
        raw = tensors.binary_parts(inference.inputs, binary)[0]
        crop = runner.entry.preprocessing.crop
        images = tensors.read_images(inference.inputs[0], raw, crop, plane.settings.max_images_per_request)
        return _Parsed(inference, layers, options, binary_outputs, images, packed)

    def run(parsed: _Parsed, ticket: Ticket) -> tuple[_Parsed, Extraction]:
        return parsed, plane.extract(
            parsed.images, parsed.layers, parsed.options, model, ticket, packed=parsed.packed, hold_answer=True
        )

    parsed, result = admitted(plane, model, read, run)  # room held before the body is read
    try:
        encoding_started = time.perf_counter()
        binary = parsed.binary_outputs
        outputs, chunks = tensors.render_outputs(
            result.features, {name: binary.get(name, binary[None]) for name in result.features}
        )
        document = {"model_name": result.model, "model_version": VERSION, "outputs": outputs}
        if parsed.inference.id is not None:
            document["id"] = parsed.inference.id
        body = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
        if chunks:
            response = Response(b"".join([body, *chunks]), mimetype="application/octet-stream")
            response.headers[tensors.BINARY_HEADER] = str(len(body))
        else:
            response = _compressed(Response(body, mimetype="application/json"))
    finally:
        result.release()  # the arrays are written into the answer: their room among the answers in flight is free
    # Serializing and compressing are part of the request's time (a large JSON answer's gzip takes seconds).
    serialize_ms = (time.perf_counter() - encoding_started) * 1000
    response.headers.update(timing_headers(result.timings, g.started, serialize_ms))
    return response


@dataclass(frozen=True)
class _Parsed:
    """An inference request read and checked: the layers asked for, their options, which go binary, the images."""

    inference: InferenceRequest
    layers: tuple[str, ...] | None
    options: Options
    binary_outputs: dict[str | None, bool]
    images: list
    packed: bool  # every output binary: the output budget counts its values once (service/dataplane/budget.py)


def _parse_json(header: bytes) -> object:
    return parse_json(
        header,
        "inference request's JSON",
        f"send UINT8 or FP32 tensors as binary data (binary_data_size and {tensors.BINARY_HEADER}) or the images "
        "as BYTES",
    )


def _requested_outputs(
    inference: InferenceRequest,
) -> tuple[tuple[str, ...] | None, Options, dict[str | None, bool]]:
    """The layers (None: the model's default), each one's options, and which go binary (key None: the rest)."""
    defaults = inference.parameters or {}
    unknown = sorted(
        key for key in defaults if key not in REQUEST_PARAMETERS + IGNORED_PARAMETERS and not key.startswith("triton_")
    )
    if unknown:
        raise InvalidRequest(
            f"unknown request parameters {listed(unknown)}; a request takes {', '.join(REQUEST_PARAMETERS)}"
        )
    default_options = OutputOptions(defaults.get("pool", "none"), _flag(defaults, "normalize", False))
    binary: dict[str | None, bool] = {None: _flag(defaults, "binary_data_output", False)}
    if not inference.outputs:
        return None, default_options, binary
    options: dict[str, OutputOptions] = {}
    for output in inference.outputs:
        parameters = output.parameters or {}
        unknown = sorted(set(parameters) - set(OUTPUT_PARAMETERS))
        if unknown:
            raise InvalidRequest(
                f"output {shown(output.name)} has unknown parameters {listed(unknown)}; "
                f"an output takes {', '.join(OUTPUT_PARAMETERS)}"
            )
        if output.name in options:
            raise InvalidRequest(f"output {shown(output.name)} is requested twice")
        options[output.name] = OutputOptions(
            parameters.get("pool", default_options.pool),
            _flag(parameters, "normalize", default_options.normalize),
        )
        binary[output.name] = _flag(parameters, "binary_data", binary[None])
    return tuple(options), options, binary


def _flag(parameters: dict, key: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, not {str(value)[:50]!r}")
    return value


def _compressed(response: Response) -> Response:
    """A JSON answer gzip- or deflate- (zlib-) compressed when the client's Accept-Encoding allows it (most HTTP
    libraries send one by default) and it is worth it: number lists compress several times over."""
    response.vary.add("Accept-Encoding")
    encoding = request.accept_encodings.best_match(("gzip", "deflate"))
    data = response.get_data()
    if encoding is None or len(data) < COMPRESS_MIN_BYTES:
        return response
    response.set_data(gzip.compress(data, compresslevel=1) if encoding == "gzip" else zlib.compress(data, 1))
    response.headers["Content-Encoding"] = encoding
    return response
