"""OpenAI's embeddings messages, as pydantic models: what ``/v1`` validates, and what its OpenAPI part shows.

The request is OpenAI's (``model``, ``input``, ``encoding_format``, ``dimensions``, ``user``) with
layertap's own additions, which OpenAI's clients send through ``extra_body``: ``layers`` and ``pool``
pick another layer than the model's embedding, ``normalize: false`` returns it raw, ``truncate:
true`` cuts a text longer than the text tower's context instead of refusing it. Other fields are
refused, so that a typo is not silently ignored.

``input`` holds strings only. OpenAI also takes token arrays (lists of integers), which mean
nothing to another model's tokenizer: they are refused with the reason (:func:`parse_request`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.core.errors import InvalidRequest, TooLarge
from service.core.text import MAX_NAME_CHARS, shown
from service.dataplane.pooling import POOLS

Name = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request
MAX_TEXT_CHARS = 16_384  # a text past this is refused before it is tokenized (a data URL is bounded by the body)


class EmbeddingsRequest(BaseModel):
    """Embeddings of each input: an image as a data URL (``data:image/png;base64,...``), or a text."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: Name = Field(description="A served model, as GET /v1/models lists them")
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_INPUTS)] = Field(
        description="A string or a list of strings: images as data URLs (data:image/<type>;base64,...), text as "
        "itself (for models with a text tower: CLIP, SigLIP). URLs are never fetched."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded"
    )
    dimensions: int | None = Field(None, gt=0, description="Accepted only when it equals the embedding's size")
    user: Name | None = Field(None, description="Accepted and ignored")
    layers: Name | None = Field(None, description="layertap: one layer instead of the model's embedding (images)")
    pool: Literal[POOLS] = Field("none", description="layertap: pool that layer (none, avg, max, cls)")
    normalize: bool = Field(True, description="layertap: false returns the vector unnormalized")
    truncate: bool = Field(False, description="layertap: cut texts longer than the text tower's context")


class Embedding(BaseModel):
    """One input's vector, at its index in the request."""

    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="Numbers, or base64 of little-endian float32")


class Usage(BaseModel):
    """Tokens: each text's, as its model's tokenizer counts them; an image counts as one."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """The vectors, in input order."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    """A served model."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """The served models."""

    object: Literal["list"]
    data: list[Model]


class ErrorDetail(BaseModel):
    """OpenAI's error: a message, its type, the parameter at fault where one is, and a code."""

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """Any error, in OpenAI's shape."""

    error: ErrorDetail


def parse_request(document: object) -> EmbeddingsRequest:
    """The decoded JSON body → :class:`EmbeddingsRequest`, or InvalidRequest (TooLarge) that says what is wrong."""
    if not isinstance(document, dict):
        raise InvalidRequest('the body must be a JSON object: {"model": ..., "input": ...}')
    _check_input(document.get("input"))
    try:
        return EmbeddingsRequest.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][:2]) or 'body'}: {error['msg']}"
            for error in exc.errors(include_input=False)[:5]
        )
        raise InvalidRequest(f"the embeddings request is malformed: {problems}") from None


def _check_input(value: object) -> None:
    """The clear errors for ``input``: token arrays, non-strings, nothing, too many, too long."""
    if value is None:
        raise InvalidRequest("input is required: a string, or a list of strings")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidRequest(f"input must be a string or a list of strings, not {type(value).__name__}")
    if not items or items == [""]:
        raise InvalidRequest("input is empty: send at least one image (as a data URL) or text")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in items) or all(
        isinstance(item, list) for item in items
    ):
        raise InvalidRequest(
            "input holds token arrays, which only OpenAI's own tokenizer gives meaning to; send the texts "
            "themselves: layertap tokenizes with each model's own tokenizer"
        )
    if len(items) > MAX_INPUTS:  # a 400, as OpenAI answers it (the schema's maxItems)
        raise InvalidRequest(f"input holds {len(items)} items; at most {MAX_INPUTS} per request")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidRequest(f"input[{index}] is {type(item).__name__}, not a string: {shown(item, 40)}")
        if not item:
            raise InvalidRequest(f"input[{index}] is an empty string")
        if len(item) > MAX_TEXT_CHARS and not item.startswith("data:"):
            raise TooLarge(f"input[{index}] is {len(item):,} characters; a text may have at most {MAX_TEXT_CHARS:,}")
