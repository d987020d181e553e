"""int8: builds and calibrates offline, keeps containers hookable, names layers honestly, stays accurate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def int8_app(weights_file, tmp_path_factory):
    cache = tmp_path_factory.mktemp("int8-cache")
    app = create_app(
        Settings(weights=str(weights_file), device="cpu", precision="int8", int8_cache_dir=cache, preprocessing="exact")
    )
    engine = app.extensions["layertap.engine"]
    assert engine.wait_ready(120), engine.failure
    yield app
    engine.close()


@pytest.fixture(scope="module")
def int8(int8_app):
    return int8_app.extensions["layertap.engine"]


def test_layer_list_is_what_exists_in_int8(int8, int8_app):
    names = {c.name for c in int8.layers}
    assert {"relu", "maxpool", "layer1", "layer1.0", "layer1.0.relu", "layer1.0.bn2", "avgpool", "fc"} <= names
    assert {"layer2.0.downsample", "layer2.0.downsample.1"} <= names
    assert not names & {"conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.relu_1"}
    assert not any("add_relu" in n or n in ("quant", "dequant") for n in names)
    client = int8_app.test_client()
    shapes = [layer["name"] for layer in client.get("/shapes").json["layers"]]
    assert set(shapes) == names and len(shapes) == len(names)
    info = client.get("/info").json
    assert info["precision"] == "int8" and info["layers"] == len(names)


@pytest.mark.parametrize(
    ("layer", "nearest"),
    [("bn1", "'relu'"), ("conv1", "'relu'"), ("layer1.0.conv2", "'layer1.0.bn2'"), ("layer3.1.relu_1", "'layer3.1'"),
     ("layer2.0.downsample.0", "'layer2.0.downsample.1'")],
)  # fmt: skip
def test_fused_away_layers_are_400_naming_the_nearest(int8_app, photos, layer, nearest):
    response = int8_app.test_client().post(
        f"/features?layers={layer}", data=photos["rocket.jpg"], content_type="image/jpeg"
    )
    assert response.status_code == 400
    assert response.json["error"]["code"] == "layer_unavailable"
    assert "int8" in response.json["error"]["message"] and nearest in response.json["error"]["message"]


def test_int8_outputs_track_float32_on_real_photos(int8, engine, photos):
    """Every available layer against the float layer of the same name (the seeded test weights)."""
    images = list(photos.values())
    names = tuple(c.name for c in int8.layers)
    quantized = int8.extract(images, names).features
    reference = engine.extract(images, names).features
    for name in names:
        q = quantized[name].reshape(len(images), -1).astype(np.float64)
        f = reference[name].reshape(len(images), -1).astype(np.float64)
        cosine = (q * f).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(f, axis=1))
        assert quantized[name].dtype == np.float32 and quantized[name].shape == reference[name].shape
        assert cosine.min() >= (0.999 if name in ("avgpool", "fc") else 0.99), (name, cosine)


def test_int8_containers_fire_and_the_pass_stops_early(int8, photos):
    ran = []
    hook = int8._model.layer2.register_forward_pre_hook(lambda m, i: ran.append("layer2"))
    try:
        out = int8.extract([photos["rocket.jpg"]], ("layer1", "layer1.0")).features
    finally:
        hook.remove()
    assert out["layer1"].shape == (1, 64, 56, 56) and ran == []
    batched = int8.extract([photos["rocket.jpg"]] * 3, ("avgpool",)).features["avgpool"]
    np.testing.assert_allclose(batched[0], batched[2], rtol=1e-5, atol=1e-5)


def test_calibration_is_cached_and_keyed_by_the_weights(int8, tmp_path, state_dict, caplog):
    from service.model_repository import load_entry
    from service.quantize import build_int8
    from service.settings import DEFAULT_MODEL_REPOSITORY
    from service.weights import resolve_weights

    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    first = tmp_path / "a.pt"
    torch.save(state_dict, first)
    build_int8(entry, resolve_weights(str(first), entry), int8.preprocess, None, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    with caplog.at_level("INFO", logger="layertap.quantize"):
        again = build_int8(entry, resolve_weights(str(first), entry), int8.preprocess, None, tmp_path / "cache")
    assert "loaded from" in caplog.text
    assert again.served["relu"] == "conv1"
    changed = {k: v.clone() for k, v in state_dict.items()}
    changed["fc.bias"] += 1
    second = tmp_path / "b.pt"
    torch.save(changed, second)
    build_int8(entry, resolve_weights(str(second), entry), int8.preprocess, None, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2, "new weights must not reuse the old calibration"


def test_int8_refuses_a_gpu(weights_file, monkeypatch):
    from service import engine as engine_module
    from service.errors import StartupError

    monkeypatch.setattr(engine_module, "resolve_device", lambda spec: torch.device("cuda"))
    with pytest.raises(StartupError, match="runs on the CPU only"):
        create_app(Settings(weights=str(weights_file), device="cuda", precision="int8"))


def test_an_unwritable_cache_does_not_stop_int8(int8, tmp_path, state_dict):
    from service.model_repository import load_entry
    from service.quantize import build_int8
    from service.settings import DEFAULT_MODEL_REPOSITORY
    from service.weights import resolve_weights

    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("a file where the cache folder should be")
    built = build_int8(entry, resolve_weights("random", entry), int8.preprocess, None, blocker / "cache")
    assert built.served["avgpool"] == "avgpool"
