"""open_clip and transformers models behind real gunicorn: every front-end, the client and the Ray stage.

The server (``sourced_server``) serves CLIP ViT-B/32 from open_clip and DINOv2 from transformers,
pretrained, from a Hugging Face cache the tests filled, with downloads off. What the values are is
tests/modeling/test_sources.py's business; here, that each way in reaches them and agrees.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
from layertap_client import LayertapClient
from layertap_client.cli import main as client_main

pytestmark = pytest.mark.integration


def features(server, data: bytes, query: str) -> dict[str, np.ndarray]:
    answer = requests.post(f"{server.url}/features?{query}&encoding=base64", data=data, timeout=120)
    assert answer.status_code == 200, answer.text
    return {
        name: np.frombuffer(base64.b64decode(f["data"]), "<f4").reshape(f["shape"])
        for name, f in answer.json()["features"].items()
    }


def test_info_and_shapes_describe_the_library_s_embedding_and_tokens(sourced_server):
    for model, dimensions, norm in (("clip_vit_b32", 512, "visual.ln_post"), ("dinov2_small", 384, "layernorm")):
        info = requests.get(f"{sourced_server.url}/info?model={model}", timeout=30).json()
        assert info["default_layer"] == "embedding" and info["embedding"] == "embedding", info
        assert info["source"] in ("open_clip", "transformers") and info["weights"].startswith("pretrained:")
        assert info["labels"] is False and info["prefix_tokens"] == 1
        layers = requests.get(f"{sourced_server.url}/shapes?model={model}", timeout=30).json()["layers"]
        by_name = {layer["name"]: layer for layer in layers}
        assert by_name["embedding"]["shape"] == [1, dimensions] and layers[-1]["name"] == "embedding"
        assert by_name[norm]["layout"] == "tokens" and by_name[norm]["prefix_tokens"] == 1


def test_features_default_to_the_embedding_and_pool_by_layout(sourced_server, photos):
    photo = photos["grace_hopper.jpg"]
    embedding = features(sourced_server, photo, "model=dinov2_small")["embedding"]
    assert embedding.shape == (1, 384)
    pooled = features(sourced_server, photo, "model=dinov2_small&layers=layernorm&pool=cls")["layernorm"]
    np.testing.assert_allclose(pooled, embedding, rtol=1e-4, atol=1e-5)  # DINOv2's pooler_output is its CLS token
    tokens = features(sourced_server, photo, "model=dinov2_small&layers=layernorm")["layernorm"]
    average = features(sourced_server, photo, "model=dinov2_small&layers=layernorm&pool=avg")["layernorm"]
    np.testing.assert_allclose(average, tokens[:, 1:].mean(axis=1), rtol=1e-4, atol=1e-5)


def test_the_open_inference_protocol_serves_the_same_vectors(sourced_server, photos):
    photo = photos["rocket.jpg"]
    expected = features(sourced_server, photo, "model=clip_vit_b32")["embedding"]
    body = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(photo).decode()],
                    "parameters": {"content_type": "base64"}}],
        "outputs": [{"name": "embedding"}],
    }  # fmt: skip
    answer = requests.post(f"{sourced_server.url}/v2/models/clip_vit_b32/infer", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    assert output["name"] == "embedding" and output["shape"] == [1, 512]
    np.testing.assert_allclose(np.asarray(output["data"], np.float32).reshape(1, 512), expected, rtol=1e-4, atol=1e-5)


def test_explain_works_at_the_patch_map_and_names_it_elsewhere(sourced_server, photos):
    info = requests.get(f"{sourced_server.url}/info?model=dinov2_small", timeout=30).json()
    assert info["spatial_layers"] == ["embeddings.patch_embeddings.projection"]
    url = f"{sourced_server.url}/explain?model=dinov2_small&method=gradcam"
    answer = requests.post(url, data=photos["chelsea.png"], timeout=120)
    assert answer.status_code == 200 and answer.json()["layer"] == "embeddings.patch_embeddings.projection", answer.text
    refused = requests.post(f"{url}&layer=layernorm", data=photos["chelsea.png"], timeout=120)
    assert refused.status_code == 400 and "embeddings.patch_embeddings.projection" in refused.json()["error"]["message"]


def test_the_client_embeds_with_a_chosen_model(sourced_server, tmp_path, photos):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("grace_hopper.jpg", "coffee.png"):
        (folder / name).write_bytes(photos[name])
    out = tmp_path / "clip.npz"
    code = client_main(["embed", str(folder), "--url", sourced_server.url, "--model", "dinov2_small",
                        "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    with np.load(out) as data:
        assert data["paths"].tolist() == ["coffee.png", "grace_hopper.jpg"]
        assert data["embedding"].shape == (2, 384)
        direct = LayertapClient(sourced_server.url, model="dinov2_small").features(
            [photos["coffee.png"]], ["embedding"]
        )
        np.testing.assert_allclose(data["embedding"][0], direct["embedding"][0].reshape(-1), rtol=1e-4, atol=1e-5)
