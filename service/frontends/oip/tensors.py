"""Open Inference Protocol tensors ⇄ the data plane's images and features.

A request body is a JSON header, optionally followed (the *binary tensor data* extension) by the
raw bytes of each input whose ``binary_data_size`` parameter says so, in input order; the
``Inference-Header-Content-Length`` header gives the JSON's size. A response is laid out the
same way when outputs ask for ``binary_data``.

The image input comes in three datatypes:

- ``BYTES [N]`` (or ``[N, 1]``): encoded images. In JSON each element is a base64 string, as
  KServe's samples send them; in binary, each element is a 4-byte little-endian length and then
  its bytes (Triton's serialization, what ``tritonclient`` and KServe's client write).
- ``UINT8 [N, H, W, 3]``: RGB pixels, resized and cropped by the service like a decoded upload.
- ``FP32 [N, 3, crop, crop]``: the model's input, already resized, cropped and normalized.

Outputs are float32 (``FP32``), row-major: flat lists in JSON, little-endian bytes in binary.
Every count and size is checked against the bytes actually sent before anything is decoded.
"""

from __future__ import annotations

import math

import numpy as np

from service.core.errors import InvalidRequest
from service.frontends.http.bodies import check_image_count, decode_base64
from service.frontends.oip.schema import RequestInput
from service.images.sources import ImageInput, Pixels, Tensor

BINARY_HEADER = "Inference-Header-Content-Length"
_LENGTH_PREFIX = 4  # bytes of the little-endian length before each BYTES element


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it (empty without ``Inference-Header-Content-Length``)."""
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InvalidRequest(f"{BINARY_HEADER} must be an integer, not {header_length[:50]!r}") from None
    if not 0 < length <= len(body):
        raise InvalidRequest(f"{BINARY_HEADER} is {length}, but the body has {len(body)} bytes")
    return body[:length], body[length:]


def binary_parts(inputs: list[RequestInput], binary: bytes) -> list[bytes | None]:
    """Each input's share of the binary data (None for an input sent in JSON); every byte must be claimed."""
    parts: list[bytes | None] = []
    offset = 0
    for tensor in inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is None:
            if tensor.data is None:
                raise InvalidRequest(f"input {tensor.name!r} has neither data nor a binary_data_size parameter")
            parts.append(None)
            continue
        if tensor.data is not None:
            raise InvalidRequest(f"input {tensor.name!r} has both data and a binary_data_size parameter")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidRequest(
                f"input {tensor.name!r} claims binary_data_size {size!r}, but {len(binary) - offset} bytes are left"
            )
        parts.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data belong to no input (binary_data_size)")
    return parts


def read_images(tensor: RequestInput, raw: bytes | None, crop: int, max_images: int) -> list[ImageInput]:
    """The images of the request's one input, by its datatype; counted against the limit before decoding."""
    shape = tensor.shape
    if not shape or any(size < 0 for size in shape):
        raise InvalidRequest(f"input {tensor.name!r} has shape {shape}; the first dimension is the number of images")
    count = shape[0]
    if count == 0:
        raise InvalidRequest(f"input {tensor.name!r} holds no image (shape {shape})")
    check_image_count(count, max_images)
    if tensor.datatype == "BYTES":
        if math.prod(shape) != count:
            raise InvalidRequest(f"a BYTES input is one encoded image per element: shape [N] or [N, 1], not {shape}")
        return _length_prefixed(raw, count) if raw is not None else _base64_elements(tensor.data, count)
    if tensor.datatype == "UINT8":
        if len(shape) != 4 or shape[3] != 3:
            raise InvalidRequest(f"a UINT8 input is RGB pixels of shape [N, height, width, 3], not {shape}")
        return [Pixels(image) for image in _numbers(tensor, raw, np.dtype(np.uint8))]
    if tensor.datatype == "FP32":
        if shape[1:] != [3, crop, crop]:
            raise InvalidRequest(
                f"an FP32 input is the model's normalized input, of shape [N, 3, {crop}, {crop}], not {shape}"
            )
        return [Tensor(np.ascontiguousarray(image)) for image in _numbers(tensor, raw, np.dtype("<f4"))]
    raise InvalidRequest(
        f"input datatype {tensor.datatype[:20]!r} is not served; send BYTES (encoded images), "
        f"UINT8 [N, height, width, 3] (RGB pixels) or FP32 [N, 3, {crop}, {crop}] (normalized)"
    )


def render_outputs(features: dict[str, np.ndarray], binary: dict[str, bool]) -> tuple[list[dict], list[bytes]]:
    """The response's outputs, and the binary data of those sent as binary (in the same order)."""
    outputs, chunks = [], []
    for name, array in features.items():
        output: dict = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary[name]:
            data = np.ascontiguousarray(array, dtype="<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            output["data"] = np.ascontiguousarray(array).reshape(-1)  # orjson writes it as a flat list
        outputs.append(output)
    return outputs, chunks


def _length_prefixed(raw: bytes, count: int) -> list[bytes]:
    """Triton's BYTES serialization: per element, a uint32 little-endian length, then that many bytes."""
    elements, offset = [], 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + _LENGTH_PREFIX > len(raw):
            raise InvalidRequest("the BYTES input's binary data ends inside an element's length")
        size = int.from_bytes(view[offset : offset + _LENGTH_PREFIX], "little")
        offset += _LENGTH_PREFIX
        if offset + size > len(raw):
            raise InvalidRequest(f"a BYTES element claims {size} bytes, but {len(raw) - offset} are left")
        elements.append(bytes(view[offset : offset + size]))
        offset += size
        if len(elements) > count:
            break
    if len(elements) != count:
        raise InvalidRequest(f"the BYTES input's shape says {count} images, its binary data holds {len(elements)}")
    return elements


def _base64_elements(data: object, count: int) -> list[bytes]:
    if isinstance(data, list) and all(isinstance(item, list) and len(item) == 1 for item in data):
        data = [item[0] for item in data]  # shape [N, 1], sent nested
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise InvalidRequest("a BYTES input's data in JSON is a list of base64 strings, one per image")
    if len(data) != count:
        raise InvalidRequest(f"the BYTES input's shape says {count} images, its data holds {len(data)}")
    return [decode_base64(text, f"data[{index}]") for index, text in enumerate(data)]


def _numbers(tensor: RequestInput, raw: bytes | None, dtype: np.dtype) -> np.ndarray:
    """A numeric input as an array of its shape: from its binary data, or from its JSON list (flat or nested)."""
    size = math.prod(tensor.shape)
    if raw is not None:
        if len(raw) != size * dtype.itemsize:
            raise InvalidRequest(
                f"input {tensor.name!r} of shape {tensor.shape} needs {size * dtype.itemsize} bytes of "
                f"{tensor.datatype}, not {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)
    try:
        values = np.asarray(tensor.data, dtype=np.float64 if dtype.kind == "f" else None)
    except (ValueError, TypeError):
        raise InvalidRequest(f"input {tensor.name!r}'s data is not a list of numbers of its shape") from None
    if values.size != size:
        raise InvalidRequest(f"input {tensor.name!r} of shape {tensor.shape} needs {size} values, not {values.size}")
    if dtype.kind == "u":
        if values.dtype.kind not in "iu" or (values.size and (values.min() < 0 or values.max() > 255)):
            raise InvalidRequest(f"input {tensor.name!r} is UINT8: its values are integers from 0 to 255")
    elif values.dtype.kind not in "iuf":
        raise InvalidRequest(f"input {tensor.name!r} is FP32: its values are numbers")
    return values.astype(dtype).reshape(tensor.shape)
