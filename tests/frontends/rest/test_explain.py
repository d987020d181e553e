"""``POST /explain`` through Flask's test client: answers, encodings, the picture, errors, and its own batches."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from tests.reference import cosine


def explain(client, data: bytes, query: str = "", **kwargs):
    return client.post(f"/explain?{query}", data=data, content_type="image/jpeg", **kwargs)


def as_array(feature: dict) -> np.ndarray:
    if feature.get("encoding") == "base64":
        return np.frombuffer(base64.b64decode(feature["data"]), "<f4").reshape(feature["shape"])
    return np.asarray(feature["data"], dtype=np.float32).reshape(feature["shape"])


def test_gradcam_answer_in_json_and_base64(client, plane, photos):
    data = photos["rocket.jpg"]
    answer = explain(client, data, "method=gradcam&layer=layer3")
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert (body["model"], body["method"], body["layer"]) == ("resnet18", "gradcam", "layer3")
    (item,) = body["explanations"]
    assert as_array(item["map"]).shape == (14, 14) and as_array(item["upsampled"]).shape == (224, 224)
    assert item["label"] is None and 0 < item["probability"] < 1  # seeded weights have no class names
    direct = plane.explain([data], "gradcam", "layer3").explanations[0]
    assert item["target"] == direct.target and item["score"] == pytest.approx(direct.score, rel=1e-5)
    encoded = explain(client, data, "method=gradcam&layer=layer3&encoding=base64").json["explanations"][0]
    np.testing.assert_allclose(as_array(encoded["map"]), as_array(item["map"]), rtol=1e-5, atol=1e-7)
    assert int(answer.headers["X-Batch-Size"]) >= 1 and float(answer.headers["X-Inference-Time"]) > 0


def test_a_spatial_op_layer_is_explained_like_a_module(client, plane, photos):
    """layer4.1.add is layer4's map before its last ReLU: Grad-CAM reads it, and refuses flatten (no map)."""
    data = photos["rocket.jpg"]
    answer = explain(client, data, "method=gradcam&layer=layer4.1.add&target=3")
    assert answer.status_code == 200, answer.json
    (item,) = answer.json["explanations"]
    assert answer.json["layer"] == "layer4.1.add" and as_array(item["map"]).shape == (7, 7)
    direct = plane.explain([data], "gradcam", "layer4.1.add", target=3).explanations[0]
    np.testing.assert_allclose(as_array(item["map"]), direct.map, rtol=1e-5, atol=1e-6)
    refused = explain(client, data, "method=gradcam&layer=flatten")
    assert refused.status_code == 400 and "spatial map" in refused.json["error"]["message"]


def test_every_method_and_a_batch_of_images(client, photos):
    for method in ("gradcam", "gradcam++", "layercam", "hirescam"):
        answer = explain(client, photos["rocket.jpg"], f"method={method}&target=3")
        assert answer.status_code == 200, (method, answer.json)
        assert answer.json["layer"] == "layer4" and answer.json["explanations"][0]["target"] == 3
    parts = [(io.BytesIO(photos[name]), name) for name in ("rocket.jpg", "chelsea.png")]
    batch = client.post(
        "/explain?method=integrated_gradients&steps=4", data={"image": parts}, content_type="multipart/form-data"
    )
    assert batch.status_code == 200, batch.json
    assert batch.json["layer"] is None and len(batch.json["explanations"]) == 2
    for item in batch.json["explanations"]:
        assert as_array(item["map"]).shape == (224, 224) and "upsampled" not in item


def test_png_is_the_map_over_the_preprocessed_image(client, photos):
    answer = explain(client, photos["grace_hopper.jpg"], "method=gradcam&format=png&target=5")
    assert answer.status_code == 200 and answer.content_type == "image/png"
    assert answer.headers["X-Target"] == "5" and float(answer.headers["X-Probability"]) > 0
    picture = np.asarray(Image.open(io.BytesIO(answer.data)))
    assert picture.shape == (224, 224, 3)
    # Half the image, half the jet ramp: where the map is 0 the blue channel dominates the red.
    heat = explain(client, photos["grace_hopper.jpg"], "method=gradcam&target=5").json["explanations"][0]
    upsampled = as_array(heat["upsampled"])
    cold, hot = upsampled < 0.05, upsampled > 0.95
    assert cold.any() and hot.any()
    assert picture[hot][:, 0].mean() > picture[cold][:, 0].mean()  # red where the map is high
    ig = explain(client, photos["grace_hopper.jpg"], "method=integrated_gradients&steps=4&format=png")
    assert ig.status_code == 200 and Image.open(io.BytesIO(ig.data)).size == (224, 224)


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("method=gradcam&layer=layer9", 400, "did you mean"),
        ("method=gradcam&layer=avgpool", 400, "spatial map"),
        ("method=gradcam&layer=fc", 400, "layer4"),
        ("method=gradcam&target=1000", 400, "0 to 999"),
        ("method=gradcam&target=-1", 400, "0 to 999"),
        ("method=gradcam&target=cat", 400, "integer"),
        ("method=integrated_gradients&steps=100000", 400, "LAYERTAP_MAX_EXPLAIN_STEPS"),
        ("method=integrated_gradients&steps=0", 400, "at most"),
        ("method=integrated_gradients&layer=layer4", 400, "input pixels"),
        ("method=shap", 400, "method must be one of"),
        ("format=gif", 400, "format must be one of"),
        ("model=nope", 404, "no model"),
    ],
)
def test_bad_requests_are_json_errors_before_the_upload_is_read(client, photos, query, status, words):
    answer = explain(client, b"never decoded", query)
    assert answer.status_code == status and words in answer.json["error"]["message"], answer.json


def test_more_images_than_an_explain_batch_are_refused(client, photos, settings):
    images = [base64.b64encode(photos["rocket.jpg"]).decode()] * (settings.max_explain_batch + 1)
    answer = client.post("/explain", json={"images": images})
    assert answer.status_code == 413 and "LAYERTAP_MAX_EXPLAIN_BATCH" in answer.json["error"]["message"]


def test_explanations_are_admitted_by_their_cost_in_passes(client, photos, settings):
    """8 images × 257 passes (integrated gradients at 256 steps) is 2,056 passes: over the default 2,048,
    refused before any image is decoded (they are not images at all)."""
    assert settings.max_explain_passes == 2048
    images = [base64.b64encode(b"never decoded").decode()] * 8
    answer = client.post("/explain?method=integrated_gradients&steps=256", json={"images": images})
    assert answer.status_code == 413, answer.json
    assert "8 images × 257 passes of integrated_gradients is 2,056" in answer.json["error"]["message"]
    assert "LAYERTAP_MAX_EXPLAIN_PASSES" in answer.json["error"]["message"]
    answer = client.post("/explain?method=integrated_gradients&steps=254", json={"images": images})  # 2,040
    assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_image", answer.json


def test_bad_images_and_a_png_of_several(client, photos):
    assert explain(client, b"not an image", "method=gradcam").json["error"]["code"] == "invalid_image"
    answer = client.post(
        "/explain?format=png",
        json={"images": [base64.b64encode(photos["rocket.jpg"]).decode()] * 2},
    )
    assert answer.status_code == 400 and "one image" in answer.json["error"]["message"]


def test_explanations_and_features_interleave_without_mixing(client, photos, plane):
    """Inference keeps inference_mode; explanations keep grad mode; neither leaks into the other."""
    expected_features = client.post("/features?layers=avgpool", data=photos["rocket.jpg"]).json
    expected_map = plane.explain([photos["rocket.jpg"]], "layercam", "layer2").explanations[0].map
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def one(i: int) -> None:
        try:
            barrier.wait(10)
            if i % 2:
                answer = client.post("/features?layers=avgpool", data=photos["rocket.jpg"])
                assert answer.status_code == 200, answer.json
                got = answer.json["features"]["avgpool"]["data"]
                assert cosine(got, expected_features["features"]["avgpool"]["data"]) >= 0.99999, "features changed"
            else:
                answer = explain(client, photos["rocket.jpg"], "method=layercam&layer=layer2")
                assert answer.status_code == 200, answer.json
                got = as_array(answer.json["explanations"][0]["map"])
                assert cosine(got, expected_map) >= 0.99999, "explanation changed"
        except Exception as exc:  # noqa: BLE001 - reported below, with the thread that raised it
            errors.append(f"{i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    metrics = client.get("/metrics").data.decode()
    assert 'endpoint="/explain"' in metrics
