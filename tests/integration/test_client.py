"""``layertap embed`` and the Python client against the real service: rows, errors, resume, retries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests
from layertap_client import LayertapClient, LayertapError
from layertap_client.cli import embed, main

from stress.server import start_server

pytestmark = pytest.mark.integration


@pytest.fixture
def folder(tmp_path, photos):
    root = tmp_path / "pictures"
    (root / "cats").mkdir(parents=True)
    for name, data in photos.items():
        target = root / ("cats" if name.endswith(".png") else "") / name
        target.write_bytes(data)
    (root / "cats" / "broken.jpg").write_bytes(photos["rocket.jpg"][:3000])
    (root / "notes.txt").write_text("not an image, and not picked up")
    return root


def test_embed_writes_one_row_per_image_and_lists_refusals(server, folder, tmp_path, photos, capsys):
    out = tmp_path / "features.npz"
    code = main(["embed", str(folder), "--url", server.url, "--out", str(out), "--layers", "avgpool,layer4",
                 "--batch-size", "2", "--concurrency", "2", "--normalize", "--quiet"])  # fmt: skip
    assert code == 0
    assert "skipped cats/broken.jpg" in capsys.readouterr().err
    with np.load(out) as data:
        paths = data["paths"].tolist()
        assert paths == ["cats/chelsea.png", "cats/coffee.png", "grace_hopper.jpg", "rocket.jpg"]
        assert data["avgpool"].shape == (4, 512) and data["layer4"].shape == (4, 512)
        assert data["errors"].tolist()[0][0] == "cats/broken.jpg"
        np.testing.assert_allclose(np.linalg.norm(data["avgpool"], axis=1), 1, rtol=1e-5)
        # Independent of the client: the service's raw layer4, averaged and normalized here.
        raw = requests.post(f"{server.url}/features?layers=layer4", data=photos["rocket.jpg"], timeout=60).json()
        layer4 = np.asarray(raw["features"]["layer4"]["data"], dtype=np.float64).reshape(512, -1).mean(1)
        expected = layer4 / np.linalg.norm(layer4)
        np.testing.assert_allclose(data["layer4"][paths.index("rocket.jpg")], expected, rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "features.npz.parts").exists()


def test_the_python_client_asks_for_op_layers_like_modules(server, photos):
    client = LayertapClient(server.url)
    arrays = client.features([photos["rocket.jpg"]], ["layer2.0.add", "flatten", "avgpool"])
    assert arrays["layer2.0.add"].shape == (1, 128, 28, 28) and arrays["layer2.0.add"].min() < 0  # before the ReLU
    np.testing.assert_allclose(arrays["flatten"].reshape(-1), arrays["avgpool"].reshape(-1), rtol=1e-6)


class Interrupting(LayertapClient):
    """Fails like Ctrl-C after `allowed` requests; counts the images it was asked for."""

    def __init__(self, url, allowed):
        super().__init__(url)
        self.allowed, self.images = allowed, 0

    def features(self, images, layers, pool="none", normalize=False):
        if self.allowed == 0:
            raise KeyboardInterrupt
        self.allowed -= 1
        self.images += len(images)
        return super().features(images, layers, pool=pool, normalize=normalize)


def test_an_interrupted_run_resumes_where_it_stopped(server, folder, tmp_path):
    shutil.rmtree(folder / "cats")  # four good images would do; keep two, to make batches of one
    out = tmp_path / "features.npz"
    first = Interrupting(server.url, allowed=1)
    with pytest.raises(KeyboardInterrupt):
        embed(folder, out, first, ["fc"], batch_size=1, concurrency=1, progress=False)
    assert first.images == 1 and len(list((tmp_path / "features.npz.parts").glob("part-*.npz"))) == 1
    second = Interrupting(server.url, allowed=100)
    summary = embed(folder, out, second, ["fc"], batch_size=1, concurrency=1, progress=False)
    assert second.images == 1, "the image embedded before the interruption is not sent again"
    assert summary["images"] == 2
    with np.load(out) as data:
        assert data["paths"].tolist() == ["grace_hopper.jpg", "rocket.jpg"]
        assert data["fc"].shape == (2, 1000)


def test_overloaded_service_is_retried_until_everything_is_embedded(tmp_path, weights_file, folder):
    server = start_server(
        tmp_path / "logs",
        {
            "LAYERTAP_WEIGHTS": str(weights_file),
            "LAYERTAP_MAX_QUEUE_IMAGES": "2",
            "LAYERTAP_MAX_IMAGES_PER_REQUEST": "2",
            "LAYERTAP_MAX_BATCH_SIZE": "2",
        },
    )
    try:
        server.wait_ready()
        (folder / "cats" / "broken.jpg").unlink()
        for i in range(3):  # 12 images
            for source in list(folder.glob("*.jpg")) + list((folder / "cats").glob("*.png")):
                if "copy" not in source.name:
                    shutil.copy(source, source.with_name(f"copy{i}-{source.name}"))
        out = tmp_path / "features.npz"
        client = LayertapClient(server.url, backoff_s=0.05)
        summary = embed(folder, out, client, ["avgpool"], batch_size=2, concurrency=6, progress=False)
        metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    finally:
        server.stop()
    assert summary["images"] == 16 and summary["errors"] == []
    refused = [line for line in metrics.splitlines() if line.startswith('layertap_errors_total{code="overloaded"}')]
    assert refused and float(refused[0].split()[-1]) > 0, "the test must actually have met 429s"


def test_a_request_level_error_stops_embed_instead_of_skipping_every_image(server, folder, tmp_path, capsys):
    out = tmp_path / "features.npz"
    code = main(["embed", str(folder), "--url", server.url, "--out", str(out), "--layers", "layer5", "--quiet"])
    assert code == 1
    assert "unknown_layer" in capsys.readouterr().err
    assert not out.exists()


def test_resuming_with_other_options_is_refused(server, folder, tmp_path):
    out = tmp_path / "features.npz"
    with pytest.raises(KeyboardInterrupt):
        embed(folder, out, Interrupting(server.url, allowed=1), ["fc"], batch_size=1, concurrency=1, progress=False)
    with pytest.raises(LayertapError, match="unfinished run made with"):
        embed(folder, out, LayertapClient(server.url), ["avgpool"], batch_size=1, concurrency=1, progress=False)


def test_client_explains_images_as_arrays(server, photos):
    client = LayertapClient(server.url)
    images = [photos["rocket.jpg"], photos["chelsea.png"]]
    cams = client.explain(images, "gradcam++", layer="layer3", target=2)
    assert [c["target"] for c in cams] == [2, 2]
    assert cams[0]["map"].shape == (14, 14) and cams[0]["upsampled"].shape == (224, 224)
    assert 0 <= cams[0]["upsampled"].min() and cams[0]["upsampled"].max() <= 1
    (attribution,) = client.explain(images[:1], "integrated_gradients", steps=4)
    assert attribution["map"].shape == (224, 224) and attribution["upsampled"] is None
    with pytest.raises(LayertapError, match="spatial map"):
        client.explain(images[:1], "gradcam", layer="fc")


def test_explain_soak_keeps_memory_flat(server, photos):
    """300 explanations: the gradient passes' memory is released after each batch (a kept map alone is 200 kB)."""
    from stress.server import rss_mb

    worker = server.workers()[0]
    session = requests.Session()

    def explain_many(count: int) -> None:
        for i in range(count):
            method = ("gradcam", "layercam", "hirescam", "gradcam++")[i % 4]
            layer = ("layer4", "layer2", "layer1.0.bn1")[i % 3]
            answer = session.post(
                f"{server.url}/explain?method={method}&layer={layer}&encoding=base64",
                data=photos["rocket.jpg"],
                headers={"Content-Type": "image/jpeg"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text[:200]

    explain_many(50)  # warm: the allocator's pools and the graph's first shapes
    before = rss_mb(worker)
    explain_many(300)
    grown = rss_mb(worker) - before
    assert grown < 50, f"RSS grew by {grown:.0f} MB over 300 explanations"
