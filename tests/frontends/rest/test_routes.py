"""The HTTP API through Flask's test client: golden values end to end, input forms, errors, concurrency."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from service.app import create_app
from service.core.settings import Settings
from service.modeling.build import place
from service.runners.seams import RunnerSeams
from tests.conftest import encode, gradient_image
from tests.reference import reference_outputs

GOLDEN = ("bn1", "layer1.0.bn2", "layer1.0.relu", "layer1.0.relu_1", "layer2", "avgpool", "fc")


def post_image(client, data: bytes, layers: str | None = None, content_type: str = "image/jpeg"):
    url = "/features" if layers is None else f"/features?layers={layers}"
    return client.post(url, data=data, content_type=content_type)


# float32 against the reference: at most 2.2e-5 apart and 8.8e-5 relative on the sample photos (2-core AMX machine).
GOLDEN_RTOL, GOLDEN_ATOL = 2e-4, 5e-5


def expected_for(reference_model, plane, images: list[bytes]) -> dict[str, torch.Tensor]:
    """Independent side: torchvision's own transforms on PIL images, then the hand-written forward."""
    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    x = torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for data in images])
    return reference_outputs(reference_model, x)


def as_array(feature: dict) -> np.ndarray:
    array = np.asarray(feature["data"], dtype=np.float32)
    assert list(array.shape) == feature["shape"]
    return array


# ---- golden values over HTTP ---------------------------------------------------------------
def test_features_equal_independent_computation(client, plane, reference_model, photos):
    data = photos["grace_hopper.jpg"]
    response = post_image(client, data, ",".join(GOLDEN))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["model"] == "resnet18"
    assert body["weights"].startswith("file:resnet18-seeded.pt@sha256:")
    assert list(body["features"]) == list(GOLDEN)  # request order, nothing else
    expected = expected_for(reference_model, plane, [data])
    for name in GOLDEN:
        got = as_array(body["features"][name])
        assert got.shape == tuple(expected[name].shape), name
        np.testing.assert_allclose(got, expected[name].numpy(), rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL, err_msg=name)
    bn1 = as_array(body["features"]["bn1"])
    assert (bn1 < 0).any(), "bn1 must be the pre-ReLU value"


def test_default_layer_is_avgpool(client, photos):
    body = post_image(client, photos["rocket.jpg"]).json
    assert list(body["features"]) == ["avgpool"]
    assert body["features"]["avgpool"]["shape"] == [1, 512, 1, 1]


def test_multipart_batch_is_answered_in_request_order(client, plane, reference_model, photos):
    names = ["rocket.jpg", "chelsea.png", "grace_hopper.jpg"]
    parts = [(io.BytesIO(photos[n]), n) for n in names]
    response = client.post("/features?layers=fc,layer3", data={"image": parts}, content_type="multipart/form-data")
    assert response.status_code == 200, response.json
    fc = as_array(response.json["features"]["fc"])
    assert fc.shape == (3, 1000)
    expected = expected_for(reference_model, plane, [photos[n] for n in names])
    np.testing.assert_allclose(fc, expected["fc"].numpy(), rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL)
    assert response.json["features"]["layer3"]["shape"] == [3, 256, 14, 14]


def test_json_base64_batch_and_data_urls(client, photos):
    plain = base64.b64encode(photos["coffee.png"]).decode()
    data_url = "data:image/png;base64," + base64.b64encode(photos["chelsea.png"]).decode()
    response = client.post("/features?layers=avgpool", json={"images": [plain, data_url]})
    assert response.status_code == 200, response.json
    both = as_array(response.json["features"]["avgpool"])
    single = as_array(post_image(client, photos["chelsea.png"], "avgpool", "image/png").json["features"]["avgpool"])
    np.testing.assert_allclose(both[1:], single, rtol=1e-4, atol=1e-5)


def test_octet_stream_and_missing_content_type_are_raw_images(client, photos):
    for content_type in ("application/octet-stream", None):
        response = client.post("/features?layers=fc", data=photos["rocket.jpg"], content_type=content_type)
        assert response.status_code == 200, (content_type, response.json)


def decode_feature(feature: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(feature["data"]), "<f4").reshape(feature["shape"])


def test_timing_headers(client, photos):
    response = post_image(client, photos["rocket.jpg"], "layer1")
    for header in ("X-Preprocess-Time", "X-Queue-Time", "X-Inference-Time", "X-Serialize-Time", "X-Total-Time"):
        assert float(response.headers[header]) >= 0
    assert int(response.headers["X-Batch-Size"]) >= 1
    total = float(response.headers["X-Total-Time"])
    assert total >= float(response.headers["X-Serialize-Time"]) + float(response.headers["X-Inference-Time"])


def test_a_large_answer_is_streamed_a_layer_at_a_time_with_the_same_values(client, plane, photos):
    """Every layer of ResNet18 is 8.8 million values: over STREAM_MIN_VALUES, so written as it is sent."""
    every = ",".join(layer.name for layer in plane.runner(None).layers)
    response = client.post(f"/features?layers={every}&encoding=base64", data=photos["rocket.jpg"])
    assert response.status_code == 200 and response.is_streamed
    assert "X-Serialize-Time" not in response.headers and "Content-Length" not in response.headers
    streamed = response.json
    response.close()
    assert plane.answers.held == 0  # its room among the answers in flight is back once it is sent
    assert list(streamed["features"]) == every.split(",") and streamed["model"] == "resnet18"
    for layer in ("conv1", "layer3.1.relu_1", "fc"):  # each as its own small answer, encoded whole
        alone = client.post(f"/features?layers={layer}&encoding=base64", data=photos["rocket.jpg"])
        assert "X-Serialize-Time" in alone.headers
        one, every_ = (decode_feature(answer["features"][layer]) for answer in (alone.json, streamed))
        # Alone, a layer no conv or BN output is asked beside may come from the BN-folded twin: float rounding.
        np.testing.assert_allclose(one, every_, rtol=1e-4, atol=1e-4)


# ---- special images end to end --------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("JPEG", "CMYK"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("PNG", "L"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("BMP", "RGB"),
        ("TIFF", "RGB"),
    ],
)
def test_formats_end_to_end(client, fmt, mode):
    response = post_image(client, encode(gradient_image(160, 120, mode), fmt), "avgpool", "application/octet-stream")
    assert response.status_code == 200, response.json
    assert np.isfinite(as_array(response.json["features"]["avgpool"])).all()


# ---- errors ----------------------------------------------------------------------------------
def assert_error(response, status: int, code: str, *fragments: str) -> dict:
    assert response.status_code == status, response.data[:500]
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert error["code"] == code
    for fragment in fragments:
        assert fragment in error["message"]
    assert "Traceback" not in error["message"]
    return error


def test_unknown_layer_names_alternatives(client, photos):
    error = assert_error(
        post_image(client, photos["rocket.jpg"], "layer5"), 400, "unknown_layer", "'layer5'", "/shapes"
    )
    assert "layer4" in error["message"]


@pytest.mark.parametrize(
    ("layers", "fragment"),
    [("", "empty"), ("fc,,avgpool", "empty name"), ("fc,fc", "twice"), (",".join(["fc"] * 500), "layers requested")],
)
def test_bad_layer_lists(client, photos, layers, fragment):
    assert_error(post_image(client, photos["rocket.jpg"], layers), 400, "bad_request", fragment)


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        (b"", "bad_request", "empty"),
        (b"GIF89a garbage", "invalid_image", "cannot identify"),
        (b"%PDF-1.4 not an image", "invalid_image", "cannot identify"),
    ],
)
def test_bad_images_are_400(client, data, code, fragment):
    assert_error(post_image(client, data, "fc"), 400, code, fragment)


def test_truncated_photo_is_400(client, photos):
    data = photos["grace_hopper.jpg"]
    assert_error(post_image(client, data[: len(data) // 2]), 400, "invalid_image", "truncated")


def test_unsupported_content_type_is_415(client, photos):
    response = post_image(client, photos["rocket.jpg"], "fc", "text/plain")
    assert_error(response, 415, "unsupported_media_type", "multipart/form-data", "image/*")


def test_bad_multipart_and_json_bodies(client, photos):
    response = client.post("/features", data={"file": (io.BytesIO(b"x"), "a.jpg")}, content_type="multipart/form-data")
    assert_error(response, 400, "bad_request", "named 'image'", "file")
    response = client.post("/features", data={"image": (io.BytesIO(b""), "a.jpg")}, content_type="multipart/form-data")
    assert_error(response, 400, "invalid_image", "empty")
    assert_error(client.post("/features", data=b"{nope", content_type="application/json"), 400, "bad_request", "JSON")
    assert_error(client.post("/features", json={"images": "abc"}), 400, "bad_request", '{"images"')
    assert_error(
        client.post("/features", json={"images": ["***"]}), 400, "bad_request", "images[0] is not valid base64"
    )
    assert_error(client.post("/features", json={"images": []}), 400, "bad_request", "no image")


@pytest.fixture(scope="module")
def small_limits_app(weights_file):
    app = create_app(
        Settings(
            weights=str(weights_file),
            device="cpu",
            max_body_bytes=200_000,
            max_pixels=500_000,
            max_images_per_request=2,
            max_output_values=40_000,
        )
    )
    plane = app.extensions["layertap.dataplane"]
    assert plane.wait_ready(60)
    yield app
    plane.close()


def test_limits_are_413(small_limits_app, photos):
    client = small_limits_app.test_client()
    assert_error(post_image(client, b"\0" * 200_001), 413, "payload_too_large", "200,000 bytes")
    assert_error(post_image(client, b"\0" * 200_000), 400, "invalid_image")  # at the limit: read, then judged
    for total, status in ((200_001, 413), (200_000, 400)):  # the multipart limit is exact too
        boundary = "layertap-test"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        body = head + b"\0" * (total - len(head) - len(tail)) + tail
        response = client.post("/features", data=body, content_type=f"multipart/form-data; boundary={boundary}")
        assert response.status_code == status, (total, response.json)
    big = encode(Image.new("RGB", (1000, 600)), "PNG")  # 600,000 px, small file
    assert_error(post_image(client, big, "fc", "image/png"), 413, "image_too_large", "500,000")
    tiny = encode(gradient_image(8, 8), "PNG")
    three = [(io.BytesIO(tiny), f"{i}.png") for i in range(3)]
    response = client.post("/features", data={"image": three}, content_type="multipart/form-data")
    assert_error(response, 413, "too_many_images", "limit is 2")
    assert post_image(client, photos["rocket.jpg"], "fc").status_code == 200


def test_an_answer_over_the_output_budget_is_413_before_the_upload(small_limits_app, photos):
    """layer4 is 512×7×7 = 25,088 values an image; the budget is 40,000, and a JSON number counts 3."""
    client = small_limits_app.test_client()
    photo = photos["rocket.jpg"]
    assert post_image(client, photo, "layer4&encoding=base64").status_code == 200
    assert post_image(client, photo, "layer4&pool=avg").status_code == 200  # 512 values, 1,536 as JSON
    response = post_image(client, b"\0" * 200_001, "layer4")  # over the body limit too: refused before the upload
    assert_error(response, 413, "answer_too_large", "75,264 values (1 image × 75,264), over the budget of 40,000")
    assert "pool=avg" in response.json["error"]["message"] and "encoding=base64" in response.json["error"]["message"]
    tiny = encode(gradient_image(8, 8), "PNG")
    two = [(io.BytesIO(tiny), f"{i}.png") for i in range(2)]
    response = client.post(
        "/features?layers=layer4&encoding=base64", data={"image": two}, content_type="multipart/form-data"
    )
    assert_error(response, 413, "answer_too_large", "2 images × 25,088")
    assert "fewer images per request" in response.json["error"]["message"]


def test_no_redirect_is_built_from_the_host_header(client):
    """werkzeug would merge the slashes of /ui//app.js, or add one to /ui, in a 308 to whatever Host said."""
    for path in ("/ui//app.js", "//ui/app.js", "/ui"):
        response = client.get(path, headers={"Host": "attacker.example"})
        assert response.status_code in (200, 404) and "Location" not in response.headers, (path, response.status)


def test_a_json_body_of_too_many_values_is_413_before_it_is_parsed(client):
    body = b'{"images": [' + b"1," * 1_000_000 + b"1]}"  # 2 MB, a million numbers: 269 MB once parsed
    response = client.post("/features", data=body, content_type="application/json")
    assert_error(response, 413, "payload_too_large", "over 1,000,000 values in the JSON body")


def test_long_names_are_refused_by_length_and_quoted_short(client, photos):
    response = post_image(client, photos["rocket.jpg"], "x" * 5_000)
    assert_error(response, 400, "bad_request", "longer than 256 characters", "(5,000 characters)")
    assert len(response.data) < 1_000
    response = client.post(f"/features?model={'m' * 5_000}", data=photos["rocket.jpg"])
    assert_error(response, 404, "unknown_model", "(5,000 characters)")
    assert len(response.data) < 1_000


def test_unknown_route_and_method_are_json(client):
    response = client.get("/nope")
    assert_error(response, 404, "not_found", "POST /features, /explain; GET /shapes")
    assert ", /docs; the Open Inference Protocol under /v2" in response.json["error"]["message"]
    response = client.get("/features")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_service_keeps_serving_after_errors(client, photos):
    for bad in (b"", b"junk", photos["rocket.jpg"][:1000]):
        assert post_image(client, bad).status_code == 400
    assert post_image(client, photos["rocket.jpg"]).status_code == 200


# ---- shapes, health, readiness, info --------------------------------------------------------
def test_shapes_classic_table(client):
    body = client.get("/shapes?height=28&width=28&batch=10").json
    assert body["input"] == {"batch": 10, "channels": 3, "height": 28, "width": 28}
    top = {layer["name"]: layer["shape"] for layer in body["layers"] if "." not in layer["name"]}
    assert top == {
        "conv1": [10, 64, 14, 14],
        "bn1": [10, 64, 14, 14],
        "relu": [10, 64, 14, 14],
        "maxpool": [10, 64, 7, 7],
        "layer1": [10, 64, 7, 7],
        "layer2": [10, 128, 4, 4],
        "layer3": [10, 256, 2, 2],
        "layer4": [10, 512, 1, 1],
        "avgpool": [10, 512, 1, 1],
        "fc": [10, 1000],
    }
    relu = [layer for layer in body["layers"] if layer["module"] == "layer2.1.relu"]
    assert [(r["name"], r["call"], r["calls"], r["type"]) for r in relu] == [
        ("layer2.1.relu", 0, 2, "ReLU"),
        ("layer2.1.relu_1", 1, 2, "ReLU"),
    ]
    names = [layer["name"] for layer in body["layers"]]
    assert names.index("layer1.0.conv1") < names.index("layer1.0") < names.index("layer1") < names.index("fc")


def test_shapes_default_is_the_served_input(client, plane):
    body = client.get("/shapes").json
    assert body["input"] == {"batch": 1, "channels": 3, "height": 224, "width": 224}
    assert len(body["layers"]) == len(plane.runner(None).layers) == 75
    assert {layer["name"]: layer["shape"] for layer in body["layers"]}["layer4"] == [1, 512, 7, 7]


def test_shapes_with_ops_lists_op_layers_where_their_calls_return(client):
    body = client.get("/shapes?ops=true&height=64&width=64").json
    ops = {layer["name"]: layer for layer in body["layers"] if layer["op"] is not None}
    assert list(ops) == [f"layer{s}.{b}.add" for s in range(1, 5) for b in range(2)] + ["flatten"]
    assert ops["layer1.0.add"]["shape"] == [1, 64, 16, 16] and ops["layer1.0.add"]["module"] == "layer1.0"
    assert ops["flatten"] == {**ops["flatten"], "op": "function", "shape": [1, 512], "module": ""}
    names = [layer["name"] for layer in body["layers"]]
    assert names.index("layer1.0.relu") < names.index("layer1.0.add") < names.index("layer1.0.relu_1")
    assert all(layer["op"] is None for layer in body["layers"] if layer["name"] not in ops)
    assert "op" not in client.get("/shapes").json["layers"][0]  # without ops=true, as before


def test_op_layers_are_served_and_misspelt_ones_get_close_names(client, photos, plane):
    reply = post_image(client, photos["rocket.jpg"], "layer1.0.add,flatten,avgpool")
    assert reply.status_code == 200, reply.json
    features = reply.json["features"]
    assert features["layer1.0.add"]["shape"] == [1, 64, 56, 56]
    np.testing.assert_allclose(
        np.asarray(features["flatten"]["data"]).ravel(), np.asarray(features["avgpool"]["data"]).ravel(), rtol=1e-6
    )
    error = assert_error(post_image(client, photos["rocket.jpg"], "layer1.0.ad"), 400, "unknown_layer")
    assert "'layer1.0.add'" in error["message"] and "ops=true" in error["message"]


@pytest.mark.parametrize(
    "query", ["height=abc", "height=0", "width=-3", "batch=0", "batch=100000", "height=99999", "width=1.5", "ops=maybe"]
)
def test_shapes_bad_values_are_400(client, query):
    assert_error(client.get(f"/shapes?{query}"), 400, "bad_request")


def test_health_ready_info(client, plane):
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").json == {"status": "ready", "models": {"resnet18": "ready"}}
    info = client.get("/info").json
    assert info["model"] == "resnet18" and info["weights"] == plane.runner(None).weights.label
    assert info["device"] == "cpu" and info["dtype"] == info["dtype_setting"] == "float32"
    assert info["preprocessing"]["crop"] == 224 and info["preprocessing"]["resize"] == 256
    assert info["preprocessing"]["mode"] == "exact"  # the tests' settings; the service's default is fast
    assert info["preprocessing"]["resize_kernel"] == "pillow"
    assert info["limits"]["max_pixels"] == 40_000_000
    assert info["version"]


def test_ready_is_503_until_warm_up_has_run(weights_file, photos):
    release = threading.Event()

    def slow_place(*args, **kwargs):  # the model thread places the model while it loads
        release.wait(30)
        return place(*args, **kwargs)

    app = create_app(Settings(weights=str(weights_file), device="cpu"), seams=RunnerSeams(place=slow_place))
    client = app.test_client()
    try:
        assert client.get("/health").status_code == 200
        response = client.get("/ready")
        assert response.status_code == 503 and response.json == {"status": "loading", "models": {"resnet18": "loading"}}
        assert_error(post_image(client, photos["rocket.jpg"]), 503, "not_ready", "GET /ready")
        # The Open Inference Protocol's probes and inference say the same, in its words.
        assert client.get("/v2/health/live").json == {"live": True}
        for url in ("/v2/health/ready", "/v2/models/resnet18/ready"):
            response = client.get(url)
            assert response.status_code == 503 and response.json["ready"] is False and response.headers["Retry-After"]
        data = base64.b64encode(photos["rocket.jpg"]).decode()
        v2 = client.post(
            "/v2/models/resnet18/infer",
            json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [data]}]},
        )
        assert v2.status_code == 503 and "loading" in v2.json["error"] and v2.headers["Retry-After"] == "1"
        release.set()
        assert app.extensions["layertap.dataplane"].wait_ready(30)
        assert client.get("/ready").json == {"status": "ready", "models": {"resnet18": "ready"}}
        assert post_image(client, photos["rocket.jpg"]).status_code == 200
    finally:
        release.set()
        app.extensions["layertap.dataplane"].close()


def test_failed_load_turns_health_red(weights_file):
    def broken_place(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    app = create_app(Settings(weights=str(weights_file), device="cpu"), seams=RunnerSeams(place=broken_place))
    plane = app.extensions["layertap.dataplane"]
    assert not plane.wait_ready(10)
    client = app.test_client()
    assert client.get("/health").status_code == 503
    assert client.get("/health").json == {"status": "failed", "code": "model_failed", "models": ["resnet18"]}
    assert client.get("/ready").json["status"] == "failed"
    live = client.get("/v2/health/live")
    assert live.status_code == 503 and live.json == {"live": False}


# ---- concurrency -----------------------------------------------------------------------------
def test_concurrent_requests_get_exactly_their_own_layers(client, plane, reference_model, photos):
    layer_sets = [("bn1",), ("layer1.0.relu_1", "fc"), ("layer2",), ("avgpool",), ("layer1.0.bn2", "layer3.1"), ("fc",)]
    names = list(photos)
    expected = expected_for(reference_model, plane, [photos[n] for n in names])
    barrier = threading.Barrier(12)
    batch_sizes = []

    def one(i: int) -> None:
        layers = layer_sets[i % len(layer_sets)]
        photo = i % len(names)
        barrier.wait(10)
        response = post_image(client, photos[names[photo]], ",".join(layers))
        assert response.status_code == 200, response.json
        assert list(response.json["features"]) == list(layers)
        batch_sizes.append(int(response.headers["X-Batch-Size"]))
        for name in layers:
            got = as_array(response.json["features"][name])
            assert got.shape[0] == 1
            np.testing.assert_allclose(
                got[0], expected[name][photo].numpy(), rtol=GOLDEN_RTOL, atol=GOLDEN_ATOL, err_msg=f"{i}:{name}"
            )

    with ThreadPoolExecutor(12) as pool:
        for _ in range(3):
            barrier.reset()
            list(pool.map(one, range(12)))
    assert max(batch_sizes) > 1, "concurrent requests should have shared forward passes"


def test_requests_leave_no_hooks_or_threads_behind(client, photos):
    modules = {layer["module"] for layer in client.get("/shapes").json["layers"]}
    # The first pass that watches ops registers the scope pre-hooks of the tap it ran on, once.
    assert post_image(client, photos["rocket.jpg"], "layer1.0.add").status_code == 200
    before = client.get("/info").json
    # each module hooked once at load on the model and on its folded twin, and once more on each tap that has
    # served op layers (the twin; the model too once an explanation read an op layer)
    assert before["hooks"] in (3 * len(modules), 4 * len(modules))
    for layers in ("fc", "bn1", "layer2,avgpool", "layer3.1.add,flatten"):
        assert post_image(client, photos["rocket.jpg"], layers).status_code == 200
    after = client.get("/info").json
    assert after["hooks"] == before["hooks"] and after["threads"] == before["threads"]


# ---- output options --------------------------------------------------------------------------
def test_output_options_over_http(client, photos):
    data = photos["grace_hopper.jpg"]
    raw = client.post("/features?layers=layer4,fc&encoding=base64", data=data, content_type="image/jpeg").json
    feature = raw["features"]["layer4"]
    assert (feature["dtype"], feature["byteorder"], feature["encoding"]) == ("float32", "little", "base64")
    layer4 = np.frombuffer(base64.b64decode(feature["data"]), "<f4").reshape(feature["shape"])
    assert layer4.shape == (1, 512, 7, 7)
    as_json = client.post("/features?layers=layer4", data=data, content_type="image/jpeg").json
    np.testing.assert_array_equal(layer4, np.asarray(as_json["features"]["layer4"]["data"], dtype=np.float32))

    pooled = client.post("/features?layers=layer4&pool=avg&normalize=true", data=data, content_type="image/jpeg").json
    vector = np.asarray(pooled["features"]["layer4"]["data"], dtype=np.float32)
    assert pooled["features"]["layer4"]["shape"] == [1, 512]
    expected = layer4.mean(axis=(2, 3))
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("query", ["pool=median", "encoding=xml", "normalize=maybe", "pool=cls"])
def test_bad_output_options_are_400(client, photos, query):
    response = client.post(f"/features?{query}", data=photos["rocket.jpg"], content_type="image/jpeg")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"
