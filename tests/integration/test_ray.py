"""``layertap-ray embed`` on a local Ray (2 CPUs), against the HTTP service on the same images and settings.

One Ray for the module; the server is the integration suite's shared one (float32, small limits),
and the Ray actors get the same ``LAYERTAP_*`` settings.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray  # a dev dependency: missing, the module fails rather than skips (tests/skip_audit.py)
import requests
from PIL import Image

from tests.integration.conftest import SMALL_LIMITS
from tests.reference import row_cosines

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, photos) -> tuple:
    """Two dozen images (the sample photos resized, rotated, re-encoded, in nested folders) and five bad files."""
    root = tmp_path_factory.mktemp("ray-photos")
    good = []
    for index, (name, data) in enumerate(photos.items()):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        variants = {
            f"original/{name}": data,
            f"small/{index}.jpg": _encode(image.resize((image.width // 2, image.height // 2)), "JPEG", quality=85),
            f"rotated/deep/{index}.png": _encode(image.rotate(90, expand=True), "PNG"),
            f"gray/{index}.jpg": _encode(image.convert("L"), "JPEG", quality=80),
            f"flipped/{index}.webp": _encode(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "WEBP"),
            f"cropped/{index}.bmp": _encode(image.crop((0, 0, image.width * 2 // 3, image.height)), "BMP"),
        }
        for relative, content in variants.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_bytes(content)
            good.append(relative)
    bad = {
        "bad/truncated.jpg": photos["rocket.jpg"][:2000],
        "bad/text.jpg": b"not an image at all",
        "bad/empty.png": b"",
        "bad/too-many-pixels.png": _encode(Image.new("L", (3000, 2000)), "PNG"),  # over LAYERTAP_MAX_PIXELS here
    }
    for relative, content in bad.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    (root / "notes.txt").write_text("not an image suffix: never read")
    return root, sorted(good), sorted(bad)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.fixture
def service_settings(monkeypatch, weights_file):
    """The shared server's settings, where layertap-ray reads them (and passes them to its actors)."""
    for key, value in {"LAYERTAP_WEIGHTS": str(weights_file), **SMALL_LIMITS, "LAYERTAP_LOG_LEVEL": "warning"}.items():
        monkeypatch.setenv(key, value)


def rows_by_path(out, root) -> dict[str, dict]:
    table = pq.read_table(out)
    rows = {}
    for row in table.to_pylist():
        rows[str(Path(row["path"]).relative_to(root))] = row
    return rows, table.schema


def http_features(server, root, relative: str, query: str) -> dict[str, np.ndarray]:
    answer = requests.post(
        f"{server.url}/features?{query}&encoding=base64", data=(root / relative).read_bytes(), timeout=60
    )
    answer.raise_for_status()
    return {
        name: np.frombuffer(base64.b64decode(f["data"]), "<f4").reshape(-1)
        for name, f in answer.json()["features"].items()
    }


def test_embeds_a_folder_like_the_service_and_records_bad_files(
    local_ray, service_settings, server, photo_folder, tmp_path
):
    from service.bulk.ray_embed import main

    root, good, bad = photo_folder
    out = tmp_path / "embeddings"
    assert main(["embed", str(root), "--out", str(out), "--layers", "avgpool,layer2", "--batch-size", "8"]) == 0
    rows, schema = rows_by_path(out, root)
    assert sorted(rows) == sorted(good + bad), "every image file once; notes.txt is not an image"
    assert json.loads(schema.field("layer2").metadata[b"shape"]) == [128, 28, 28]
    assert json.loads(schema.field("avgpool").metadata[b"shape"]) == [512, 1, 1]
    assert schema.field("layer2").type.list_size == 128 * 28 * 28
    for relative in bad:
        assert rows[relative]["error"] and rows[relative]["layer2"] is None, relative
    assert "image_too_large" in rows["bad/too-many-pixels.png"]["error"]
    for relative in good:
        row = rows[relative]
        assert row["error"] is None, (relative, row["error"])
        expected = http_features(server, root, relative, "layers=avgpool,layer2")
        for layer in ("avgpool", "layer2"):
            got = np.asarray(row[layer], np.float32)
            assert row_cosines(got[None], expected[layer][None])[0] >= 0.99999, (relative, layer)


def test_pooled_and_normalized_rows(local_ray, service_settings, server, photo_folder, tmp_path):
    """A module layer and an op layer (a residual sum, issue 27's op layers), pooled and normalized."""
    from service.bulk.ray_embed import main

    root, _, _ = photo_folder
    out = tmp_path / "pooled"
    source = str(root / "original")
    layers = "layer4,layer3.1.add"
    assert main(["embed", source, "--out", str(out), "--layers", layers, "--pool", "avg", "--normalize"]) == 0
    rows, schema = rows_by_path(out, root)
    assert json.loads(schema.field("layer4").metadata[b"shape"]) == [512]
    assert json.loads(schema.field("layer3.1.add").metadata[b"shape"]) == [256]
    assert len(rows) == 4
    for relative, row in rows.items():
        expected = http_features(server, root, relative, f"layers={layers}&pool=avg&normalize=true")
        for layer in ("layer4", "layer3.1.add"):
            got = np.asarray(row[layer], np.float32)
            assert abs(np.linalg.norm(got) - 1) < 1e-5
            assert row_cosines(got[None], expected[layer][None])[0] >= 0.99999, (relative, layer)


def test_an_open_clip_model_embeds_like_the_service(
    local_ray, monkeypatch, hub_cache, sourced_server, photo_folder, tmp_path
):
    """The Ray stage builds models the way the service does, whatever their library: CLIP's embedding."""
    from service.bulk.ray_embed import main

    settings = {
        "LAYERTAP_MODELS": "clip_vit_b32", "LAYERTAP_WEIGHTS": "pretrained", "LAYERTAP_ALLOW_DOWNLOAD": "false",
        "LAYERTAP_HUB_CACHE": str(hub_cache), "LAYERTAP_DTYPE": "float32", "LAYERTAP_LOG_LEVEL": "warning",
    }  # fmt: skip
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    root, _, _ = photo_folder
    out = tmp_path / "clip"
    assert main(["embed", str(root / "original"), "--out", str(out), "--pool", "none"]) == 0
    rows, schema = rows_by_path(out, root)
    assert json.loads(schema.field("embedding").metadata[b"shape"]) == [512] and len(rows) == 4
    for relative, row in rows.items():
        expected = http_features(sourced_server, root, relative, "model=clip_vit_b32")["embedding"]
        assert row_cosines(np.asarray(row["embedding"], np.float32)[None], expected[None])[0] >= 0.99999, relative
