"""int8: builds and calibrates offline, keeps containers hookable, names layers honestly, stays accurate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.app import create_app
from service.core.errors import LayerUnavailable
from service.core.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


# docs/hardware.md's int8 table; achieved on the seeded weights: avgpool 0.99956, fc 0.99910, the lowest layer 0.99780.
FLOORS = {"avgpool": 0.9995, "fc": 0.999, "every layer": 0.995}


@pytest.fixture(scope="module")
def int8_app(weights_file, tmp_path_factory):
    cache = tmp_path_factory.mktemp("int8-cache")
    app = create_app(
        Settings(weights=str(weights_file), device="cpu", precision="int8", int8_cache_dir=cache, preprocessing="exact")
    )
    plane = app.extensions["layertap.dataplane"]
    assert plane.wait_ready(120), plane.failure
    yield app
    plane.close()


@pytest.fixture(scope="module")
def int8(int8_app):
    return int8_app.extensions["layertap.dataplane"]


def test_layer_list_is_what_exists_in_int8(int8, int8_app):
    names = {c.name for c in int8.runner(None).layers}
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


def test_op_layers_are_a_400_naming_float32(int8_app, photos):
    reply = int8_app.test_client().post(
        "/features?layers=layer1.0.add", data=photos["rocket.jpg"], content_type="application/octet-stream"
    )
    assert reply.status_code == 400, reply.json
    assert "op layer" in reply.json["error"]["message"] and "float32" in reply.json["error"]["message"]
    assert all(c.op is None for c in int8_app.extensions["layertap.dataplane"].runner(None).shapes(1, 64, 64, True))


def test_int8_outputs_track_float32_on_real_photos(int8, plane, photos):
    """Every available layer against the float layer of the same name (the seeded test weights)."""
    images = list(photos.values())
    names = tuple(c.name for c in int8.runner(None).layers)
    quantized = int8.extract(images, names).features
    reference = plane.extract(images, names).features
    for name in names:
        q = quantized[name].reshape(len(images), -1).astype(np.float64)
        f = reference[name].reshape(len(images), -1).astype(np.float64)
        cosine = (q * f).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(f, axis=1))
        assert quantized[name].dtype == np.float32 and quantized[name].shape == reference[name].shape
        assert cosine.min() >= FLOORS.get(name, FLOORS["every layer"]), (name, cosine)


def test_int8_containers_fire(int8, photos):
    out = int8.extract([photos["rocket.jpg"]], ("layer1", "layer1.0", "layer2.0.downsample")).features
    assert out["layer1"].shape == (1, 64, 56, 56) and out["layer1.0"].shape == (1, 64, 56, 56)
    assert out["layer2.0.downsample"].shape == (1, 128, 28, 28)
    batched = int8.extract([photos["rocket.jpg"]] * 3, ("avgpool",)).features["avgpool"]
    np.testing.assert_allclose(batched[0], batched[2], rtol=1e-5, atol=1e-5)


def test_calibration_is_cached_and_keyed_by_the_weights_and_images(int8, tmp_path, state_dict, caplog, photos):
    from service.core.settings import DEFAULT_MODEL_REPOSITORY
    from service.modeling.entries import load_entry
    from service.modeling.int8 import build_int8
    from service.modeling.weights import resolve_weights

    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    first = tmp_path / "a.pt"
    torch.save(state_dict, first)
    build_int8(entry, resolve_weights(str(first), entry), int8.runner(None).preprocess, None, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    with caplog.at_level("INFO", logger="layertap.quantize"):
        again = build_int8(
            entry, resolve_weights(str(first), entry), int8.runner(None).preprocess, None, tmp_path / "cache"
        )
    assert "loaded from" in caplog.text
    assert again.served["relu"] == "conv1"
    changed = {k: v.clone() for k, v in state_dict.items()}
    changed["fc.bias"] += 1
    second = tmp_path / "b.pt"
    torch.save(changed, second)
    build_int8(entry, resolve_weights(str(second), entry), int8.runner(None).preprocess, None, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2, "new weights must not reuse the old calibration"
    other_images = tmp_path / "calibration"
    other_images.mkdir()
    (other_images / "rocket.jpg").write_bytes(photos["rocket.jpg"])
    build_int8(
        entry, resolve_weights(str(second), entry), int8.runner(None).preprocess, other_images, tmp_path / "cache"
    )
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3, "other calibration images must calibrate again"


def test_the_cache_key_covers_the_torch_version_and_every_calibration_pixel(int8):
    from service.core.settings import DEFAULT_MODEL_REPOSITORY
    from service.modeling.entries import load_entry
    from service.modeling.int8 import cache_key
    from service.modeling.weights import resolve_weights

    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    weights = resolve_weights("random", entry)
    pixels = np.zeros((2, 8, 8, 3), np.uint8)
    key = cache_key(entry, weights, pixels, torch_version="2.14.1")
    assert cache_key(entry, weights, pixels.copy(), torch_version="2.14.1") == key
    assert cache_key(entry, weights, pixels, torch_version="2.15.0") != key
    pixels[1, 7, 7, 2] = 1
    assert cache_key(entry, weights, pixels, torch_version="2.14.1") != key


def test_int8_refuses_a_gpu(weights_file):
    """Refused at start, before anything touches the device: so it is tested with a CUDA device that need not exist."""
    from service.core.errors import StartupError
    from service.dataplane.plane import DataPlane
    from service.runners.seams import RunnerSeams

    settings = Settings(weights=str(weights_file), device="cuda", precision="int8")
    with pytest.raises(StartupError, match="runs on the CPU only"):
        DataPlane.from_settings(settings, seams=RunnerSeams(device=torch.device("cuda")))


def test_an_unwritable_cache_does_not_stop_int8(int8, tmp_path, state_dict):
    from service.core.settings import DEFAULT_MODEL_REPOSITORY
    from service.modeling.entries import load_entry
    from service.modeling.int8 import build_int8
    from service.modeling.weights import resolve_weights

    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("a file where the cache folder should be")
    built = build_int8(entry, resolve_weights("random", entry), int8.runner(None).preprocess, None, blocker / "cache")
    assert built.served["avgpool"] == "avgpool"


def test_int8_outside_the_resnet_family_is_a_clear_start_up_error(tmp_path):
    from service.core.errors import StartupError

    with pytest.raises(StartupError, match=r"int8 serves the ResNet family .* LAYERTAP_PRECISION=float32"):
        create_app(Settings(models="mobilenet_v3_large", weights="random", precision="int8", int8_cache_dir=tmp_path))


def test_int8_refuses_another_library_s_resnet_with_the_same_message(tmp_path):
    """timm's resnet18 shares torchvision's name, not its modules: int8 stays torchvision's ResNets."""
    from service.core.errors import StartupError

    (tmp_path / "timm_resnet18.toml").write_text('source = "timm"\narchitecture = "resnet18"\nweights = "a1_in1k"\n')
    settings = Settings(
        models="timm_resnet18", model_repository=tmp_path, weights="random", precision="int8", int8_cache_dir=tmp_path
    )
    with pytest.raises(StartupError, match=r"int8 serves the ResNet family .* LAYERTAP_PRECISION=float32"):
        create_app(settings)


def test_bottleneck_names_are_honest_in_int8(photos, tmp_path):
    """ResNet50's Bottleneck calls its ReLU three times and registers the quantizable ReLUs after bn3."""
    planes = {
        precision: create_app(
            Settings(models="resnet50", weights="random", precision=precision, int8_cache_dir=tmp_path)
        ).extensions["layertap.dataplane"]
        for precision in ("float32", "int8")
    }
    try:
        assert all(plane.wait_ready(300) for plane in planes.values()), [p.failure for p in planes.values()]
        names = {c.name for c in planes["int8"].runner(None).layers}
        block = ("layer1.0.relu", "layer1.0.relu_1", "layer1.0.bn3", "layer1.0.downsample.1", "layer1.0")
        assert set(block) <= names
        assert not names & {"layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv3", "layer1.0.relu_2", "layer1.0.relu1"}
        with pytest.raises(LayerUnavailable, match=r"'layer1\.0\.relu_1'"):
            planes["int8"].extract([photos["rocket.jpg"]], ("layer1.0.bn2",))
        with pytest.raises(LayerUnavailable, match=r"'layer1\.0' holds that value"):
            planes["int8"].extract([photos["rocket.jpg"]], ("layer1.0.relu_2",))
        images = [photos["rocket.jpg"], photos["chelsea.png"]]
        quantized, reference = (planes[p].extract(images, (*block, "avgpool")).features for p in ("int8", "float32"))
        for name in (*block, "avgpool"):
            q, f = (x[name].reshape(2, -1).astype(np.float64) for x in (quantized, reference))
            cosine = (q * f).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(f, axis=1))
            assert cosine.min() >= 0.998, (name, cosine)  # achieved: 0.99875 (layer1.0), 0.99944 (avgpool)
    finally:
        for plane in planes.values():
            plane.close()


def test_explanations_need_float32_and_say_so(int8_app, photos):
    answer = int8_app.test_client().post(
        "/explain?method=gradcam", data=photos["rocket.jpg"], content_type="image/jpeg"
    )
    assert answer.status_code == 400 and "float32" in answer.json["error"]["message"]
