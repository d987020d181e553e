"""The Open Inference Protocol's REST messages (KServe v2), as pydantic models.

One source for two jobs: the v2 front-end validates the JSON part of every infer request with
:class:`InferenceRequest`, and the OpenAPI document (service/frontends/docs.py) takes the JSON Schema
of every v2 message from these classes. Names and meanings follow the protocol's REST chapter
(github.com/kserve/open-inference-protocol). ``data`` is left untyped: its element type depends
on ``datatype``, and service/frontends/oip/tensors.py checks it with numpy, which is far faster than
validating a list of 150,528 floats element by element.

Fields the protocol has and layertap does not use are accepted and ignored (KServe's client
sends ``model_name`` in the request, tritonclient sends ``timeout`` and ``priority`` parameters).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from service.core.errors import InvalidRequest
from service.core.text import MAX_NAME_CHARS, shown

# Every name, id and string a client sends is bounded too (service/core/text.py): a 19 MB output
# name is refused by its length, never matched against the layers or echoed back.
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
# The protocol's parameter maps: values are strings, numbers and booleans. Every list and map is
# bounded, so that a malformed request is refused after a handful of errors, never a million.
Parameters = Annotated[dict[Name, bool | int | float | Name], Field(max_length=64)]
# How the schema shows a tensor's elements: flat and of one of the protocol's kinds (nested lists are
# accepted too). An unbounded schema here would make test generators recurse without end.
_ELEMENTS = {"type": "array", "items": {"type": ["number", "string", "boolean"]}}


def _elements_schema(schema: dict) -> None:
    """``data``'s schema: the elements as above, optional but never null, so no ``default: null`` (which an
    array does not admit, and which validators of the document refuse)."""
    schema.pop("default", None)
    schema.update(_ELEMENTS)


class RequestInput(BaseModel):
    """An input tensor: its elements in ``data``, or after the JSON when ``binary_data_size`` says so."""

    name: Name
    shape: list[int] = Field(max_length=8, description="The tensor's shape; the first dimension is the images")
    datatype: Name = Field(description="BYTES (encoded images), UINT8 (RGB pixels) or FP32 (normalized tensors)")
    parameters: Parameters | None = None
    data: Any = Field(
        default=None,
        description="The elements, row-major (flat or nested); BYTES elements are base64 strings. Absent when "
        "the binary_data_size parameter says the bytes follow the JSON (binary tensor data extension)",
        json_schema_extra=_elements_schema,
    )


class RequestOutput(BaseModel):
    """A layer to return, and how."""

    name: Name = Field(description="A layer name, as GET /v2/models/{model} lists them")
    parameters: Parameters | None = Field(
        default=None, description="binary_data (bool), pool (none, avg, max, cls), normalize (bool)"
    )


class InferenceRequest(BaseModel):
    """An inference request: one image input, the layers to return."""

    id: Name | None = Field(default=None, description="Echoed in the response")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_output (bool), and pool and normalize as defaults for every output"
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1, description="Exactly one image input")
    outputs: list[RequestOutput] | None = Field(
        default=None, max_length=4096, description="Layers to return; none: the model's default embedding layer"
    )


class ResponseOutput(BaseModel):
    """A layer's output: float32, row-major."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[float] | None = Field(default=None, description="Flat, row-major; absent when sent as binary")


class InferenceResponse(BaseModel):
    """The answer to an inference request; ``id`` echoes the request's."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(BaseModel):
    """A tensor a model takes or gives."""

    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for a dimension of any size (the batch)")
    parameters: Parameters | None = None


class ServerMetadata(BaseModel):
    """The server, and the protocol extensions it supports."""

    name: str
    version: str
    extensions: list[str]


class ModelMetadata(BaseModel):
    """A model's inputs (three ways to send images, one per request) and outputs (every layer)."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: Parameters | None = None


class ServerLive(BaseModel):
    """Liveness."""

    live: bool


class ServerReady(BaseModel):
    """Readiness: every model loaded and warm."""

    ready: bool


class ModelReady(BaseModel):
    """A model's readiness."""

    name: str
    ready: bool


class ErrorResponse(BaseModel):
    """Any error, as the protocol words it."""

    error: str


def _where(location: tuple) -> str:
    """``outputs.0.name``; a part can be a client's own dict key, which is cut short."""
    parts = (str(part) if len(str(part)) <= 40 else shown(part, 40) for part in location)
    return ".".join(parts) or "request"


def parse_request(document: object) -> InferenceRequest:
    """The decoded JSON of an infer request → :class:`InferenceRequest`, or InvalidRequest naming each problem."""
    try:
        return InferenceRequest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(error['loc'])}: {error['msg']}" for error in exc.errors(include_input=False)[:5])
        raise InvalidRequest(f"the inference request is malformed: {problems}") from None
