"""The Open Inference Protocol front-end through Flask's test client: routes, equality with /features, errors.

The real clients (tritonclient, KServe's) are in tests/integration/test_v2_clients.py.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
import torchvision
from PIL import Image

from tests.reference import reference_outputs

INFER = "/v2/models/resnet18/infer"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def bytes_input(*images: bytes) -> dict:
    return {"name": "images", "shape": [len(images)], "datatype": "BYTES", "data": [b64(i) for i in images]}


def infer(client, request: dict, url: str = INFER, **kwargs):
    return client.post(url, data=json.dumps(request), **kwargs)


def outputs_of(response) -> dict[str, np.ndarray]:
    """The response's outputs as arrays, reading JSON data and binary data alike (written independently)."""
    header_length = int(response.headers.get("Inference-Header-Content-Length", len(response.data)))
    document = json.loads(response.data[:header_length])
    offset, arrays = header_length, {}
    for output in document["outputs"]:
        assert output["datatype"] == "FP32"
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = np.asarray(output["data"], dtype=np.float32)
        else:
            values = np.frombuffer(response.data[offset : offset + size], "<f4")
            offset += size
        arrays[output["name"]] = values.reshape(output["shape"])
    assert offset == len(response.data)
    return arrays


def features(client, data: bytes, query: str) -> dict[str, np.ndarray]:
    response = client.post(f"/features?{query}", data=data, content_type="application/octet-stream")
    assert response.status_code == 200, response.json
    return {name: np.asarray(f["data"], dtype=np.float32) for name, f in response.json["features"].items()}


# ---- health and metadata -------------------------------------------------------------------
def test_server_and_model_health_and_metadata(client, plane):
    server = client.get("/v2").json
    assert server["name"] == "layertap" and "binary_tensor_data" in server["extensions"]
    assert client.get("/v2/health/live").json == {"live": True}
    assert client.get("/v2/health/ready").json == {"ready": True}
    for url in ("/v2/models/resnet18/ready", "/v2/models/resnet18/versions/1/ready"):
        assert client.get(url).json == {"name": "resnet18", "ready": True}
    metadata = client.get("/v2/models/resnet18").json
    assert metadata == client.get("/v2/models/resnet18/versions/1").json
    assert metadata["versions"] == ["1"] and metadata["parameters"]["default_output"] == "avgpool"
    assert {(i["datatype"], tuple(i["shape"])) for i in metadata["inputs"]} == {
        ("BYTES", (-1,)),
        ("UINT8", (-1, -1, -1, 3)),
        ("FP32", (-1, 3, 224, 224)),
    }
    layers = client.get("/shapes").json["layers"]
    assert [o["name"] for o in metadata["outputs"]] == [layer["name"] for layer in layers]
    assert all(o["shape"] == [-1, *layer["shape"][1:]] for o, layer in zip(metadata["outputs"], layers, strict=True))


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("/v2/models/nope", 404, "no model 'nope'"),
        ("/v2/models/resnet18/versions/2", 404, "its only version is 1"),
        ("/v2/models/nope/ready", 404, "no model"),
        ("/v2/nothing", 404, "v2 endpoints"),
    ],
)
def test_unknown_models_versions_and_routes_answer_in_the_protocol(client, url, status, words):
    response = client.get(url)
    assert response.status_code == status
    assert set(response.json) == {"error"} and words in response.json["error"]


# ---- inference -----------------------------------------------------------------------------
def test_bytes_input_equals_features_for_every_output_form(client, photos):
    data = photos["grace_hopper.jpg"]
    request = {
        "id": "req-42",
        "inputs": [bytes_input(data)],
        "outputs": [
            {"name": "layer4"},
            {"name": "avgpool", "parameters": {"binary_data": True}},
            {"name": "layer1.0.relu_1", "parameters": {"pool": "max", "normalize": True}},
        ],
    }
    response = infer(client, request)
    assert response.status_code == 200, response.json
    header = json.loads(response.data[: int(response.headers["Inference-Header-Content-Length"])])
    assert header["id"] == "req-42" and header["model_name"] == "resnet18" and header["model_version"] == "1"
    got = outputs_of(response)
    assert list(got) == ["layer4", "avgpool", "layer1.0.relu_1"]
    expected = features(client, data, "layers=layer4,avgpool")
    np.testing.assert_allclose(got["layer4"], expected["layer4"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["avgpool"], expected["avgpool"], rtol=1e-4, atol=1e-5)
    pooled = features(client, data, "layers=layer1.0.relu_1&pool=max&normalize=true")["layer1.0.relu_1"]
    np.testing.assert_allclose(got["layer1.0.relu_1"], pooled, rtol=1e-4, atol=1e-5)


def test_op_layers_are_outputs_like_modules(client, photos):
    data = photos["grace_hopper.jpg"]
    request = {"inputs": [bytes_input(data)], "outputs": [{"name": "layer2.1.add"}, {"name": "flatten"}]}
    response = infer(client, request)
    assert response.status_code == 200, response.json
    got = outputs_of(response)
    expected = features(client, data, "layers=layer2.1.add,flatten")
    np.testing.assert_allclose(got["layer2.1.add"], expected["layer2.1.add"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["flatten"], expected["flatten"], rtol=1e-4, atol=1e-5)
    assert got["layer2.1.add"].min() < 0  # the sum before the block's ReLU


def test_binary_bytes_input_several_images_and_default_output(client, photos):
    images = [photos["rocket.jpg"], photos["chelsea.png"]]
    request = {
        "inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 0}}],
        "parameters": {"binary_data_output": True},
    }
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    request["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
    header = json.dumps(request).encode()
    response = client.post(INFER, data=header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert response.status_code == 200, response.data[:500]
    assert response.content_type == "application/octet-stream"
    got = outputs_of(response)
    assert list(got) == ["avgpool"] and got["avgpool"].shape == (2, 512, 1, 1)
    for row, image in zip(got["avgpool"], images, strict=True):
        np.testing.assert_allclose(row, features(client, image, "layers=avgpool")["avgpool"][0], rtol=1e-4, atol=1e-5)


def test_uint8_pixels_are_resized_and_cropped_like_the_same_image_uploaded(client, photos):
    pixels = np.asarray(Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB"))
    request = {
        "inputs": [{"name": "pixels", "shape": [1, *pixels.shape], "datatype": "UINT8", "parameters": {}}],
        "outputs": [{"name": "layer2", "parameters": {"binary_data": True}}],
    }
    request["inputs"][0]["parameters"]["binary_data_size"] = pixels.nbytes
    header = json.dumps(request).encode()
    response = client.post(
        INFER, data=header + pixels.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 200, response.data[:500]
    expected = features(client, photos["chelsea.png"], "layers=layer2")["layer2"]
    np.testing.assert_allclose(outputs_of(response)["layer2"], expected, rtol=1e-4, atol=1e-5)


def test_fp32_tensor_is_used_as_given(client, photos, reference_model):
    """Independent side: torchvision's own transforms, then the hand-written reference forward."""
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    x = transform(Image.open(io.BytesIO(photos["rocket.jpg"])).convert("RGB")).unsqueeze(0)
    request = {
        "inputs": [{"name": "tensor", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [{"name": "bn1"}, {"name": "fc"}],
    }
    response = infer(client, request)
    assert response.status_code == 200, response.json
    got = outputs_of(response)
    expected = reference_outputs(reference_model, x)
    for name in ("bn1", "fc"):
        np.testing.assert_allclose(got[name], expected[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_and_response_bodies(client, photos, encoding):
    body = json.dumps({"inputs": [bytes_input(photos["rocket.jpg"])]}).encode()
    compressed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    response = client.post(INFER, data=compressed, headers={"Content-Encoding": encoding, "Accept-Encoding": encoding})
    assert response.status_code == 200
    assert response.headers["Content-Encoding"] == encoding
    plain = gzip.decompress(response.data) if encoding == "gzip" else zlib.decompress(response.data)
    avgpool = np.asarray(json.loads(plain)["outputs"][0]["data"], dtype=np.float32)
    expected = features(client, photos["rocket.jpg"], "layers=avgpool")["avgpool"].ravel()
    np.testing.assert_allclose(avgpool, expected, rtol=1e-4, atol=1e-5)


def test_v2_and_features_requests_share_forward_passes(client, photos):
    """One v2 and one /features request at a time, released together: a batch of 2 can only be both."""
    request = {"inputs": [bytes_input(photos["rocket.jpg"])]}
    barrier = threading.Barrier(2)
    sizes: list[int] = []

    def v2() -> None:
        barrier.wait(10)
        sizes.append(int(infer(client, request).headers["X-Batch-Size"]))

    for _ in range(20):
        thread = threading.Thread(target=v2)
        thread.start()
        barrier.wait(10)
        client.post("/features", data=photos["grace_hopper.jpg"], content_type="image/jpeg")
        thread.join(30)
        if sizes[-1] == 2:
            break
    assert 2 in sizes, f"a v2 request never shared a forward pass with /features: {sizes}"


# ---- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (b"{", {}, 400, "does not parse"),
        (b'{"inputs": []}', {}, 400, "at least 1 item"),
        (b'{"inputs": [{"name": "a"}]}', {}, 400, "inputs.0.shape"),
        (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}], "id": 7}', {}, 400, "id"),
        (json.dumps({"inputs": [bytes_input(b"x"), bytes_input(b"y")]}).encode(), {}, 400, "at most 1 item"),
        (json.dumps({"inputs": [bytes_input(b"x")], "outputs": [{"name": "layer5"}]}).encode(), {}, 400, "/v2/models"),
        (
            json.dumps({"inputs": [bytes_input(b"x")], "outputs": [{"name": "fc", "parameters": {"pooling": "avg"}}]}),
            {},
            400,
            "unknown parameters pooling",
        ),
        (
            json.dumps({"inputs": [bytes_input(b"x")], "outputs": [{"name": "fc"}, {"name": "fc"}]}),
            {},
            400,
            "requested twice",
        ),
        (json.dumps({"inputs": [bytes_input(b"not an image")]}).encode(), {}, 400, "cannot identify"),
        (json.dumps({"inputs": [bytes_input(*[b"x"] * 33)]}).encode(), {}, 413, "limit is 32"),
        (b"{}", {"Content-Encoding": "br"}, 415, "Content-Encoding"),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "does not decompress"),
        (gzip.compress(b" " * 30_000_000), {"Content-Encoding": "gzip"}, 413, "decompressed"),
    ],
)
def test_bad_requests_answer_in_the_protocol(client, settings, body, headers, status, words):
    assert settings.max_images_per_request == 32 and settings.max_body_bytes < 30_000_000
    response = client.post(INFER, data=body, headers=headers)
    assert response.status_code == status, response.json
    assert set(response.json) == {"error"} and words in response.json["error"], response.json


def test_unknown_model_is_refused_before_the_body_is_read(client):
    response = client.post("/v2/models/nope/infer", data=b"{never parsed")
    assert response.status_code == 404 and "no model 'nope'" in response.json["error"]


def test_output_parameters_override_the_request_defaults(client, photos):
    data = photos["rocket.jpg"]
    request = {
        "inputs": [bytes_input(data)],
        "parameters": {"pool": "avg", "binary_data_output": True, "triton_enable_empty_final_response": False},
        "outputs": [{"name": "layer3"}, {"name": "layer2", "parameters": {"pool": "none", "binary_data": False}}],
    }
    response = infer(client, request)
    assert response.status_code == 200, response.data[:300]
    header = json.loads(response.data[: int(response.headers["Inference-Header-Content-Length"])])
    assert "parameters" in header["outputs"][0] and "data" in header["outputs"][1]  # binary, then JSON
    got = outputs_of(response)
    assert got["layer3"].shape == (1, 256) and got["layer2"].shape == (1, 128, 28, 28)
    np.testing.assert_allclose(got["layer3"], features(client, data, "layers=layer3&pool=avg")["layer3"], atol=1e-5)


def test_unknown_request_parameters_are_refused_so_that_a_typo_is_seen(client, photos):
    request = {"inputs": [bytes_input(photos["rocket.jpg"])], "parameters": {"pooling": "avg"}}
    response = infer(client, request)
    assert response.status_code == 400 and "unknown request parameters pooling" in response.json["error"]


@pytest.mark.parametrize(
    "request_part",
    [
        {"outputs": [{"name": "layer4" * 200_000}]},  # 1.2 MB: matched against no layer, echoed in part
        {"id": "i" * 1_000_000},
        {"parameters": {"p" * 1_000_000: 1}},
        {"outputs": [{"name": "fc", "parameters": {"binary_data": "x" * 1_000_000}}]},
    ],
)
def test_every_name_and_string_is_bounded_and_quoted_short(client, photos, request_part):
    request = {"inputs": [bytes_input(photos["rocket.jpg"])], **request_part}
    response = infer(client, request)
    assert response.status_code == 400 and len(response.data) < 2_000, response.data[:300]
    assert "256 characters" in response.json["error"] or "characters)" in response.json["error"]


def test_serializing_and_compressing_count_in_the_timing_headers(client, photos):
    request = {"inputs": [bytes_input(photos["rocket.jpg"])], "outputs": [{"name": "layer1"}]}  # 200,704 numbers
    response = infer(client, request, headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["Content-Encoding"] == "gzip"
    serialize, total = float(response.headers["X-Serialize-Time"]), float(response.headers["X-Total-Time"])
    assert 0 < serialize <= total and total >= serialize + float(response.headers["X-Inference-Time"])


def test_a_request_of_too_many_json_values_is_413(client):
    request = {"inputs": [{"name": "t", "shape": [1_000_001], "datatype": "UINT8", "data": [1] * 1_000_001}]}
    response = infer(client, request)
    assert response.status_code == 413 and "over 1,000,000 values" in response.json["error"], response.data[:300]


def test_non_finite_tensors_are_refused(client):
    request = {"inputs": [{"name": "t", "shape": [1, 3, 224, 224], "datatype": "FP32", "parameters": {}}]}
    values = np.zeros((1, 3, 224, 224), "<f4")
    values[0, 1, 2, 3] = np.nan
    request["inputs"][0]["parameters"]["binary_data_size"] = values.nbytes
    header = json.dumps(request).encode()
    response = client.post(
        INFER, data=header + values.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 400 and "NaN or infinite" in response.json["error"]


def test_binary_request_compressed_and_small_or_binary_answers_left_alone(client, photos):
    data = photos["grace_hopper.jpg"]
    request = {
        "inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(data) + 4}}],
        "outputs": [{"name": "fc", "parameters": {"binary_data": True}}],
    }
    header = json.dumps(request).encode()
    body = gzip.compress(header + struct.pack("<I", len(data)) + data)
    headers = {
        "Content-Encoding": "gzip",
        "Accept-Encoding": "gzip",
        "Inference-Header-Content-Length": str(len(header)),
    }
    response = client.post(INFER, data=body, headers=headers)
    assert response.status_code == 200 and "Content-Encoding" not in response.headers  # float32 hardly compresses
    expected = features(client, data, "layers=fc")["fc"]
    np.testing.assert_allclose(outputs_of(response)["fc"], expected, rtol=1e-4, atol=1e-5)
    small = client.get("/v2", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers


def test_malformed_requests_are_refused_quickly_however_many_errors_they_hold(client):
    """Every list and map of the request is bounded: a 100,000-input request is one error, not 300,000."""
    response = client.post(INFER, data=json.dumps({"inputs": [{}] * 100_000}))
    assert response.status_code == 400 and "at most 1 item" in response.json["error"]
    assert len(response.data) < 1000, "one error, not one per input"
    too_many_values = {
        "inputs": [{"name": "t", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": [0] * 1_100_000}]
    }
    response = client.post(INFER, data=json.dumps(too_many_values))
    assert response.status_code == 413 and "binary data" in response.json["error"]


def test_data_after_a_gzip_member_is_refused(client, photos):
    body = gzip.compress(json.dumps({"inputs": [bytes_input(photos["rocket.jpg"])]}).encode()) + b"trailing"
    response = client.post(INFER, data=body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "follow the gzip data" in response.json["error"]
