"""The real service under gunicorn, over loopback with requests: every endpoint and every error."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import socket
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from service.frontends.http.upload_gate import DRAIN_BYTES
from stress.server import rss_mb, start_server
from tests.conftest import encode, gradient_image

pytestmark = pytest.mark.integration


def features(server, data: bytes, layers: str = "avgpool", content_type: str = "image/jpeg", **kwargs):
    return requests.post(
        f"{server.url}/features",
        params={"layers": layers},
        data=data,
        headers={"Content-Type": content_type},
        timeout=30,
        **kwargs,
    )


def check_error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text
    return body["error"]["message"]


def queued_images(server) -> int:
    """The images holding queue room in the (single) worker, from /info."""
    return requests.get(f"{server.url}/info", timeout=5).json()["queue_images"]


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_features_raw_multipart_and_json_agree(server, photos):
    raw = features(server, photos["rocket.jpg"], "layer4,fc")
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert set(body["features"]) == {"layer4", "fc"}
    assert body["features"]["layer4"]["shape"] == [1, 512, 7, 7]
    assert "X-Inference-Time" in raw.headers

    multipart = requests.post(
        f"{server.url}/features",
        params={"layers": "fc"},
        files=[
            ("image", ("a.png", photos["chelsea.png"], "image/png")),
            ("image", ("b.jpg", photos["rocket.jpg"], "image/jpeg")),
        ],
        timeout=30,
    )
    assert multipart.status_code == 200, multipart.text
    fc = np.asarray(multipart.json()["features"]["fc"]["data"], dtype=np.float32)
    assert fc.shape == (2, 1000)
    np.testing.assert_allclose(fc[1], np.asarray(body["features"]["fc"]["data"][0]), rtol=1e-4, atol=1e-4)

    encoded = [base64.b64encode(photos["rocket.jpg"]).decode()]
    as_json = requests.post(f"{server.url}/features", params={"layers": "fc"}, json={"images": encoded}, timeout=30)
    assert as_json.status_code == 200
    np.testing.assert_allclose(
        as_json.json()["features"]["fc"]["data"], body["features"]["fc"]["data"], rtol=1e-5, atol=1e-5
    )


def test_client_errors(server, photos):
    message = check_error(features(server, photos["rocket.jpg"], "layer9"), 400, "unknown_layer")
    assert "/shapes" in message
    check_error(features(server, b""), 400, "bad_request")
    check_error(features(server, photos["rocket.jpg"][:5000]), 400, "invalid_image")
    check_error(features(server, b"<html></html>", content_type="text/html"), 415, "unsupported_media_type")
    check_error(features(server, b"\xff" * 1_000_001), 413, "payload_too_large")
    huge = encode(Image.new("L", (3000, 2000)), "PNG")  # 6 Mpx in a few kB
    check_error(features(server, huge, content_type="image/png"), 413, "image_too_large")
    many = [("image", (f"{i}.png", encode(gradient_image(8, 8), "PNG"), "image/png")) for i in range(9)]
    check_error(requests.post(f"{server.url}/features", files=many, timeout=30), 413, "too_many_images")
    check_error(requests.get(f"{server.url}/nowhere", timeout=5), 404, "not_found")
    check_error(requests.get(f"{server.url}/features", timeout=5), 405, "method_not_allowed")


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        for _ in range(40):
            yield b"\0" * 50_000

    check_error(features(server, chunks(), content_type="application/octet-stream"), 413, "payload_too_large")


def test_keeps_serving_and_memory_stays_flat(server, photos):
    worker = server.workers()[0]
    for _ in range(20):
        assert features(server, photos["rocket.jpg"], "layer4,bn1").status_code == 200
    baseline = rss_mb(worker)
    for i in range(150):
        layers = ("fc", "layer1.0.relu_1", "layer4,bn1", "avgpool")[i % 4]
        assert features(server, photos["rocket.jpg"], layers).status_code == 200
        if i % 10 == 0:
            assert features(server, b"junk").status_code == 400
    grown = rss_mb(worker) - baseline
    assert grown < 40, f"worker RSS grew by {grown:.0f} MB over 150 requests"


def test_imagenet_weights_from_a_pre_seeded_torch_cache(imagenet_server, photos):
    info = requests.get(f"{imagenet_server.url}/info", timeout=5).json()
    assert info["weights"] == "imagenet:ResNet18_Weights.IMAGENET1K_V1" and info["labels"] is True
    response = features(imagenet_server, photos["rocket.jpg"])
    assert response.json()["weights"] == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    labels = requests.get(f"{imagenet_server.url}/labels", timeout=5).json()["labels"]
    assert len(labels) == 1000 and labels[0] == "tench"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"LAYERTAP_WEIGHTS": "/nonexistent/weights.pt"}, "file or folder /nonexistent/weights.pt does not exist"),
        ({"LAYERTAP_WEIGHTS": "imagenet", "LAYERTAP_ALLOW_DOWNLOAD": "false"}, "not in the torch cache"),
    ],
)
def test_unavailable_weights_stop_the_service_with_one_clear_message(tmp_path, env, fragment):
    server = start_server(tmp_path, {**env, "TORCH_HOME": str(tmp_path / "empty-torch-home")})
    try:
        code = server.process.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    log = server.log()
    assert code != 0
    assert fragment in log and "LAYERTAP_WEIGHTS" in log and "'random'" in log
    assert "Traceback" not in log
    assert "Booting worker" not in log  # stopped before forking a single worker


def test_unavailable_device_stops_the_service_with_one_clear_message(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs no CUDA: this machine has it, so the refusal cannot be shown")
    server = start_server(tmp_path, {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_DEVICE": "cuda"})
    try:
        code = server.process.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    assert code != 0
    assert "CUDA is not available here" in server.log() and "Traceback" not in server.log()


def test_keep_alive_survives_an_early_error_and_bad_chunking_is_400(server, photos):
    """A request refused before its body is read keeps its connection when the rest is small (drained)."""
    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    headers = {"Content-Type": "application/octet-stream"}
    small = photos["grace_hopper.jpg"]
    assert len(small) < DRAIN_BYTES
    sockets = set()
    for query, status in (("layers=nope", 400), ("layers=fc", 200), ("pool=median", 400), ("layers=fc", 200)):
        connection.request("POST", f"/features?{query}", body=small, headers=headers)
        sockets.add(id(connection.sock))
        response = connection.getresponse()
        response.read()
        assert response.status == status, query
        assert response.getheader("Connection") == "keep-alive"
    assert len(sockets) == 1  # one connection all along
    connection.close()

    def chunks():  # declared chunked, sent raw: not valid chunked encoding
        yield photos["rocket.jpg"][:5000]

    connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    connection.request("POST", "/features", body=chunks(), headers={**headers, "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"]["message"].startswith("the request body could not be read")
    connection.close()


def _raw_request(server, query: str, length: int, expect: bool, path: str = "/features") -> socket.socket:
    """A socket that has sent the headers of a POST (/features) with a body of ``length`` bytes (not sent)."""
    connection = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), timeout=30)
    head = f"POST {path}?{query} HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\nContent-Length: {length}\r\n"
    connection.sendall((head + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode())
    return connection


def _read_response(connection: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(connection)
    response.begin()
    response.body = response.read()
    return response


def test_expect_100_continue_refusals_come_before_the_upload_and_accepted_uploads_are_invited(server, photos):
    """A client that asks first uploads nothing when the answer is already known from the URL (429, 400...)."""
    photo = photos["rocket.jpg"]
    refused = _raw_request(server, "layers=nope", len(photo), expect=True)
    assert refused.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 400"  # no "100 Continue" first
    response = _read_response(refused)  # answered without a byte of the body sent
    assert response.status == 400 and response.getheader("Connection") == "close"
    refused.close()

    accepted = _raw_request(server, "layers=fc", len(photo), expect=True)
    assert accepted.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
    accepted.sendall(photo)
    response = _read_response(accepted)
    assert response.status == 200 and response.getheader("Connection") == "keep-alive"
    accepted.close()


def test_a_large_refused_upload_closes_the_connection_rather_than_draining_it(server):
    body = bytes(900_000)  # under the server's 1 MB body limit, far over what is worth draining
    connection = _raw_request(server, "layers=nope", len(body), expect=False)
    connection.sendall(body)
    response = _read_response(connection)
    assert response.status == 400 and response.getheader("Connection") == "close"
    connection.close()


def test_a_full_queue_refuses_an_expect_100_continue_request_before_its_upload(server, photos):
    """Under overload, a client that asks first gets its 429 at once and uploads nothing, on either front-end."""
    photo = photos["rocket.jpg"]
    # 32 uploads that never finish hold all of the queue's room (LAYERTAP_MAX_QUEUE_IMAGES, default 32).
    holders = [_raw_request(server, "layers=fc", len(photo), expect=False) for _ in range(32)]
    try:
        for holder in holders:
            holder.sendall(photo[:1000])
        wait_until(lambda: queued_images(server) == 32)
        asking = _raw_request(server, "layers=fc", len(photo), expect=True)
        assert asking.recv(12, socket.MSG_PEEK) == b"HTTP/1.1 429"  # no "100 Continue" first
        response = _read_response(asking)
        assert response.status == 429 and response.getheader("Connection") == "close"
        assert response.getheader("Retry-After") == "1"
        asking.close()
        # The Open Inference Protocol is admitted by the same queue, and refused in its own words.
        asking = _raw_request(server, "", 1000, expect=True, path="/v2/models/resnet18/infer")
        response = _read_response(asking)
        assert response.status == 429 and response.getheader("Retry-After") == "1"
        assert "queue" in json.loads(response.body)["error"]
        asking.close()
    finally:
        for holder in holders:
            holder.close()
    assert requests.post(f"{server.url}/features", data=photo, timeout=30).status_code == 200  # room again
