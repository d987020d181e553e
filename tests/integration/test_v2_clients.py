"""The Open Inference Protocol with clients nobody here wrote: tritonclient and KServe's InferenceRESTClient.

Both talk to a real gunicorn server on loopback. Every answer is compared with what /features
returns for the same image on the same server.
"""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.integration


def features(server, data: bytes, layers: str, query: str = "") -> dict[str, np.ndarray]:
    response = requests.post(
        f"{server.url}/features?layers={layers}{query}", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    response.raise_for_status()
    return {name: np.asarray(f["data"], dtype=np.float32) for name, f in response.json()["features"].items()}


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=120)
    yield client
    client.close()


def test_tritonclient_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("resnet18") and client.is_model_ready("resnet18", "1")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata("resnet18")
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["layer4"]["shape"] == [-1, 512, 7, 7] and outputs["layer4"]["datatype"] == "FP32"
    assert {i["datatype"] for i in metadata["inputs"]} == {"BYTES", "UINT8", "FP32"}


def test_tritonclient_binary_bytes_input_and_both_output_forms(client, server, photos):
    images = [photos["grace_hopper.jpg"], photos["rocket.jpg"]]
    tensor = triton.InferInput("images", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    outputs = [
        triton.InferRequestedOutput("layer4", binary_data=True),
        triton.InferRequestedOutput("avgpool", binary_data=False),
    ]
    result = client.infer("resnet18", [tensor], outputs=outputs, request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    for index, image in enumerate(images):
        expected = features(server, image, "layer4,avgpool")
        assert_same(result.as_numpy("layer4")[index : index + 1], expected["layer4"])
        assert_same(result.as_numpy("avgpool")[index : index + 1], expected["avgpool"])


def test_tritonclient_json_base64_versions_compression_and_default_output(client, server, photos):
    data = photos["chelsea.png"]
    tensor = triton.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64encode(data).decode()], dtype=np.object_), binary_data=False)
    result = client.infer(
        "resnet18",
        [tensor],
        model_version="1",
        request_compression_algorithm="gzip",
        response_compression_algorithm="deflate",
    )
    assert_same(result.as_numpy("avgpool"), features(server, data, "avgpool")["avgpool"])  # the default output


def test_tritonclient_request_parameters_pool_every_output(client, server, photos):
    """tritonclient sets per-output parameters for binary_data only: pooling goes in the request's parameters."""
    data = photos["grace_hopper.jpg"]
    tensor = triton.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
    outputs = [triton.InferRequestedOutput("avgpool"), triton.InferRequestedOutput("layer3")]
    result = client.infer("resnet18", [tensor], outputs=outputs, parameters={"pool": "max", "normalize": True})
    expected = features(server, data, "avgpool,layer3", "&pool=max&normalize=true")
    assert result.as_numpy("layer3").shape == (1, 256)
    assert_same(result.as_numpy("layer3"), expected["layer3"])
    assert_same(result.as_numpy("avgpool"), expected["avgpool"])


def test_tritonclient_sees_protocol_errors(client, photos):
    tensor = triton.InferInput("images", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photos["rocket.jpg"]], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="unknown layer 'layer9'") as error:
        client.infer("resnet18", [tensor], outputs=[triton.InferRequestedOutput("layer9")])
    assert error.value.status() == "400"
    with pytest.raises(InferenceServerException, match="no model") as error:
        client.infer("resnet99", [tensor])
    assert error.value.status() == "404"


def test_kserve_client_json_and_binary(server, photos):
    data = photos["grace_hopper.jpg"]

    async def run() -> tuple:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=120))
        try:
            ready = (
                await client.is_server_live(server.url),
                await client.is_server_ready(server.url),
                await client.is_model_ready(server.url, "resnet18"),
            )
            # As KServe's samples send images: base64 strings in a BYTES tensor, as JSON.
            as_json = InferRequest(
                model_name="resnet18",
                infer_inputs=[InferInput("input-0", [1], "BYTES", [base64.b64encode(data).decode()])],
                request_outputs=[RequestedOutput("layer4", parameters={"pool": "avg", "normalize": True})],
                request_id="kserve-1",
            )
            binary_input = InferInput("input-0", [1], "BYTES")
            binary_input.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
            as_binary = InferRequest(
                model_name="resnet18",
                infer_inputs=[binary_input],
                request_outputs=[RequestedOutput("layer2", parameters={"binary_data": True})],
            )
            first = await client.infer(server.url, as_json, model_name="resnet18")
            second = await client.infer(server.url, as_binary, model_name="resnet18")
            return ready, first, second
        finally:
            await client.close()

    ready, first, second = asyncio.run(run())
    assert ready == (True, True, True)
    assert first.id == "kserve-1"
    pooled = features(server, data, "layer4", "&pool=avg&normalize=true")["layer4"]
    assert_same(np.asarray(first.outputs[0].as_numpy(), dtype=np.float32).reshape(pooled.shape), pooled)
    assert second.outputs[0].name == "layer2"
    assert_same(second.outputs[0].as_numpy(), features(server, data, "layer2")["layer2"])
