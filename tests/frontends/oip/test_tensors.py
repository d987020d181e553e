"""The protocol's tensors: the binary tensor data extension, and images from each input datatype."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from service.core.errors import InvalidRequest, TooManyImages
from service.frontends.oip import tensors
from service.frontends.oip.schema import RequestInput
from service.images.sources import Pixels, Tensor


def serialize_bytes(*elements: bytes) -> bytes:
    """Triton's BYTES layout, written here independently of the code under test."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def tensor(datatype: str, shape: list[int], data=None, binary_size: int | None = None) -> RequestInput:
    parameters = None if binary_size is None else {"binary_data_size": binary_size}
    return RequestInput(name="x", shape=shape, datatype=datatype, data=data, parameters=parameters)


def test_split_body_and_binary_parts_claim_every_byte():
    header, binary = tensors.split_body(b'{"a":1}XYZW', "7")
    assert (header, binary) == (b'{"a":1}', b"XYZW")
    assert tensors.split_body(b"{}", None) == (b"{}", b"")
    for bad in ("x", "0", "99"):
        with pytest.raises(InvalidRequest, match="Inference-Header-Content-Length"):
            tensors.split_body(b"{}", bad)
    inputs = [tensor("BYTES", [1], binary_size=3), tensor("BYTES", [1], data=["aGk="]), tensor("UINT8", [1], None, 1)]
    assert tensors.binary_parts(inputs, b"abcd") == [b"abc", None, b"d"]
    with pytest.raises(InvalidRequest, match="belong to no input"):
        tensors.binary_parts(inputs, b"abcde")
    with pytest.raises(InvalidRequest, match="bytes are left"):
        tensors.binary_parts(inputs, b"ab")
    with pytest.raises(InvalidRequest, match="neither data nor"):
        tensors.binary_parts([tensor("BYTES", [1])], b"")


def test_bytes_elements_from_binary_and_from_base64():
    raw = serialize_bytes(b"first", b"", b"third")
    assert tensors.read_images(tensor("BYTES", [3], binary_size=len(raw)), raw, 224, 8) == [b"first", b"", b"third"]
    assert tensors.read_images(tensor("BYTES", [2, 1], [["aGk="], ["eW8="]]), None, 224, 8) == [b"hi", b"yo"]
    for shape, raw, message in (
        ([2], serialize_bytes(b"one"), "holds 1"),
        ([1], serialize_bytes(b"one")[:-1], "claims 3 bytes"),
        ([1], b"\x01\x00", "inside an element's length"),
        ([2, 2], serialize_bytes(b"a", b"b", b"c", b"d"), r"shape \[N\] or \[N, 1\]"),
    ):
        with pytest.raises(InvalidRequest, match=message):
            tensors.read_images(tensor("BYTES", shape, binary_size=len(raw)), raw, 224, 8)
    with pytest.raises(InvalidRequest, match=r"data\[0\] is not valid base64"):
        tensors.read_images(tensor("BYTES", [1], ["not base64!"]), None, 224, 8)


def test_image_count_is_limited_before_anything_is_decoded():
    with pytest.raises(TooManyImages, match="limit is 8"):
        tensors.read_images(tensor("BYTES", [9], ["!"] * 9), None, 224, 8)  # invalid base64, never looked at


def test_pixels_and_tensors_keep_their_values_from_json_and_binary():
    pixels = np.arange(2 * 5 * 4 * 3, dtype=np.uint8).reshape(2, 5, 4, 3)
    for data, raw in ((pixels.tolist(), None), (None, pixels.tobytes())):
        images = tensors.read_images(tensor("UINT8", [2, 5, 4, 3], data, None if raw is None else len(raw)), raw, 8, 8)
        assert all(isinstance(i, Pixels) for i in images)
        np.testing.assert_array_equal(np.stack([i.array for i in images]), pixels)
    values = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for data, raw in ((values.ravel().tolist(), None), (None, values.astype("<f4").tobytes())):
        (image,) = tensors.read_images(tensor("FP32", [1, 3, 8, 8], data, None if raw is None else len(raw)), raw, 8, 8)
        assert isinstance(image, Tensor)
        np.testing.assert_array_equal(image.array, values[0])


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("UINT8", [1, 2, 2], [0] * 4, r"\[N, height, width, 3\]"),
        ("UINT8", [1, 1, 1, 3], [0, 256, 0], "from 0 to 255"),
        ("UINT8", [1, 1, 1, 3], [0.5, 1, 2], "from 0 to 255"),
        ("UINT8", [1, 1, 2, 3], [0, 1, 2], "needs 6 values"),
        ("FP32", [1, 3, 4, 4], [0.0] * 48, r"\[N, 3, 8, 8\]"),
        ("FP32", [1, 3, 8, 8], ["a"] * 192, "not a list of numbers"),
        ("INT64", [1], [1], "not served"),
        ("BYTES", [0], [], "holds no image"),
    ],
)
def test_malformed_inputs_are_400_with_the_reason(datatype, shape, data, message):
    with pytest.raises(InvalidRequest, match=message):
        tensors.read_images(tensor(datatype, shape, data), None, 8, 8)


def test_outputs_in_json_and_binary():
    features = {"a": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "b": np.ones((1, 2), np.float32)}
    outputs, chunks = tensors.render_outputs(features, {"a": True, "b": False})
    assert outputs[0] == {"name": "a", "datatype": "FP32", "shape": [1, 2, 3], "parameters": {"binary_data_size": 24}}
    np.testing.assert_array_equal(np.frombuffer(chunks[0], "<f4"), np.arange(6))
    assert outputs[1]["data"].tolist() == [1.0, 1.0] and len(chunks) == 1
