"""The layertap API's response bodies, as pydantic models: the source of their OpenAPI schemas.

The routes render their answers as plain dicts with orjson (a ``layer1`` answer is 800,000
floats, and validating it on the way out would cost more than computing it); these classes say
what those dicts hold. They stay true because schemathesis checks every response of the running
service against the document built from them (tests/integration/test_contract.py). The Open
Inference Protocol's messages are in service/frontends/oip/schema.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypeAliasType

from service.modeling.entries import LAYOUTS

NestedNumbers = TypeAliasType("NestedNumbers", "float | list[NestedNumbers]")


class Feature(BaseModel):
    """One layer's output for the request's images."""

    shape: list[int] = Field(description="The layer's output shape; the first dimension is the image")
    data: list[NestedNumbers] | str = Field(
        description="Nested lists matching shape (encoding=json), or base64 of little-endian float32 (encoding=base64)"
    )
    dtype: Literal["float32"] | None = None
    byteorder: Literal["little"] | None = None
    encoding: Literal["base64"] | None = None


class Features(BaseModel):
    """The answer to POST /features."""

    model: str
    weights: str
    features: dict[str, Feature] = Field(description="One entry per requested layer, in request order")


class Explanation(BaseModel):
    """One image's explanation: the class explained, its score, and the map."""

    target: int = Field(description="The class index explained (default: the image's top-1)")
    label: str | None = Field(description="Its name, when the weights have class names")
    score: float = Field(description="The class's logit")
    probability: float = Field(description="Its softmax probability")
    map: Feature = Field(description="At the layer's resolution (CAM methods; ReLU'd) or the input's (attributions)")
    upsampled: Feature | None = Field(default=None, description="CAM methods: scaled to [0, 1] at the input's size")


class Explanations(BaseModel):
    """The answer to POST /explain (format=json)."""

    model: str
    weights: str
    method: str
    layer: str | None = Field(description="The layer explained (CAM methods), or null (integrated gradients)")
    explanations: list[Explanation] = Field(description="One per image, in request order")


class ShapesInput(BaseModel):
    """The input size the shapes are for."""

    batch: int
    channels: int
    height: int
    width: int


class LayerShape(BaseModel):
    """One module call (or, with ops=true, op call) and its output shape."""

    name: str = Field(
        description="The name to request: the module's path, with _1, _2 for its later calls; for an op, torch.fx's"
    )
    module: str
    type: str
    call: int
    calls: int
    shape: list[int] | None
    layout: Literal[LAYOUTS]
    prefix_tokens: int = Field(
        description="For tokens: how many come before the patches (class token, registers); pool=avg and max skip them"
    )
    op: Literal["function", "method"] | None = Field(
        None, description="With ops=true: function or method for an op layer, null for a module call"
    )


class Shapes(BaseModel):
    """The answer to GET /shapes."""

    model: str
    input: ShapesInput
    layers: list[LayerShape] = Field(
        description="Every module call (with ops=true, every op layer too), in the order the calls return"
    )


class Status(BaseModel):
    """Liveness or readiness, and each model's state."""

    status: str
    reason: str | None = None
    models: dict[str, str] | None = None


class Labels(BaseModel):
    """The classifier's class names."""

    model: str
    classifier: str
    labels: list[str] | None = Field(description="Class names in the classifier's output order; null without them")


class Info(BaseModel):
    """Model, weights, device, preprocessing, versions and limits (more keys may follow)."""

    model_config = ConfigDict(extra="allow")

    model: str
    models: list[str]
    default_model: str
    default_layer: str
    spatial_layers: list[str] = Field(description="Layers with a spatial map, for /explain's CAM methods")
    classifier: str
    weights: str
    device: str
    dtype: str
    preprocessing: dict
    version: str
    limits: dict[str, float | int]


class ErrorDetail(BaseModel):
    """What went wrong, and what to change."""

    code: str = Field(description="Stable and machine-readable, e.g. unknown_layer, overloaded")
    message: str
    request_id: str | None


class Error(BaseModel):
    """Any error of the layertap API."""

    error: ErrorDetail
