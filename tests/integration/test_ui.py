"""The debug page end to end in headless Chromium (Playwright driving Debian's /usr/bin/chromium)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright import sync_api as playwright

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_page_shows_shapes_heatmaps_and_top5_from_local_assets_only(imagenet_server, photos, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (apt-get install chromium; .ci/run installs it)")
    photo = tmp_path / "grace_hopper.jpg"
    photo.write_bytes(photos["grace_hopper.jpg"])
    outside: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})

        def only_loopback(route):
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_loopback)
        console_errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.goto(imagenet_server.url + "/")
        page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
        assert page.locator("#shape-table tbody tr").count() == 75 + 9  # and the op layers: 8 residual adds, flatten
        assert "function op" in page.locator("#shape-table tbody tr", has_text="layer1.0.add").text_content()
        assert "resnet18" in page.locator("#model-line").inner_text()
        assert page.locator("#model-select").input_value() == "resnet18"
        chosen = page.eval_on_selector_all("#layer-select option:checked", "options => options.map(o => o.value)")
        assert chosen == ["avgpool"], "the model's default layer, from /info"
        page.select_option("#layer-select", ["bn1", "layer1.0.relu_1", "layer1.0.add", "layer4", "avgpool"])
        page.set_input_files("#file-input", str(photo))
        page.click("#run")
        page.wait_for_selector("#top5 li", timeout=30_000)
        boxes = page.locator(".layer")
        assert [boxes.nth(i).get_attribute("data-layer") for i in range(boxes.count())] == [
            "bn1",
            "layer1.0.add",  # in the order the calls return: the sum, then the ReLU that rewrites it
            "layer1.0.relu_1",
            "layer4",
            "avgpool",
        ]
        assert page.locator('.layer[data-layer="layer1.0.add"] canvas').count() == 64
        assert page.locator('.layer[data-layer="bn1"] canvas').count() == 64
        assert page.locator('.layer[data-layer="layer4"] canvas').count() == 64  # first 64 of 512
        assert "first 64 of 512" in page.locator('.layer[data-layer="layer4"]').inner_text()
        assert "[1, 512, 7, 7]" in page.locator('.layer[data-layer="layer4"] h3').inner_text()
        assert page.locator('.layer[data-layer="avgpool"] canvas.vector').count() == 1  # 512 values, one strip
        assert page.locator("#top5 li").count() == 5
        assert "%" in page.locator("#top5 li").first.inner_text()
        assert "done in" in page.locator("#status").inner_text()
        # a heatmap really has pixels of different colours
        spread = page.evaluate(
            """() => {
                const c = document.querySelector('.layer[data-layer="bn1"] canvas');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                const colours = new Set();
                for (let i = 0; i < d.length; i += 4) colours.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
                return colours.size;
            }"""
        )
        assert spread > 10
        # Explain: a click on the second class of the top 5 explains that class at the last spatial layer.
        assert page.locator("#explain-layer").input_value() == "layer4"
        second = page.locator("#top5 li").nth(1)
        second_class = second.get_attribute("data-class")
        second_label = second.inner_text().split(" — ")[0]
        second.click()
        page.wait_for_function(
            "document.getElementById('explain-image').complete && document.getElementById('explain-image').naturalWidth"
        )
        assert page.evaluate("document.getElementById('explain-image').naturalWidth") == 224
        caption = page.locator("#explain-caption").inner_text()
        assert caption.startswith("gradcam at layer4: ") and second_label in caption, (caption, second_class)
        page.select_option("#explain-method", "integrated_gradients")
        assert page.locator("#explain-layer").is_disabled()
        page.click("#explain-run")
        page.wait_for_function("document.getElementById('explain-caption').textContent.startsWith('integrated')")
        assert "%" in page.locator("#explain-caption").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)
        # Another model: nothing of ResNet18's stays on screen, its explanation included.
        assert page.locator("#model-select option").all_inner_texts() == ["resnet18", "mobilenet_v3_large"]
        page.select_option("#model-select", "mobilenet_v3_large")
        page.wait_for_function("document.getElementById('model-line').textContent.startsWith('mobilenet_v3_large')")
        page.wait_for_function("document.querySelector('#layer-select option[value=\"features.16\"]') !== null")
        assert page.locator(".layer").count() == 0
        assert page.locator("#classes").is_hidden() and page.locator("#explain-panel").is_hidden()
        assert page.locator("#explain-image").is_hidden() and page.locator("#explain-caption").inner_text() == ""
        assert page.evaluate("document.getElementById('explain-image').getAttribute('src')") is None
        page.click("#run")  # its default layer, on the same photo
        page.wait_for_selector("#top5 li", timeout=30_000)
        assert page.locator("#explain-panel").is_visible() and page.locator("#explain-image").is_hidden()
        assert page.locator("#explain-layer").input_value() != "layer4"  # MobileNet's own spatial layers
        # An error from the service is shown, not swallowed.
        page.select_option("#layer-select", [])
        page.click("#run")
        assert "pick at least one layer" in page.locator("#status").inner_text()
        browser.close()
    assert outside == [], f"the page tried to reach the internet: {outside}"
    assert console_errors == [], console_errors


@contextlib.contextmanager
def opened_page(url: str):
    """The page at ``url`` in headless Chromium, once it has its layer list; then no console error may have shown."""
    console_errors: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#layer-select option').length > 0")
        yield page
        browser.close()
    assert console_errors == [], console_errors


def test_page_draws_token_layers_as_their_patch_grid(sourced_server, photos, tmp_path):
    """DINOv2's blocks: 1 class token, then 16×16 patches of 384 features: a 16×16 map per feature."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (apt-get install chromium; .ci/run installs it)")
    photo = tmp_path / "chelsea.png"
    photo.write_bytes(photos["chelsea.png"])
    with opened_page(sourced_server.url) as page:
        assert page.locator("#model-select option").all_inner_texts() == ["clip_vit_b32", "dinov2_small"]
        page.select_option("#model-select", "dinov2_small")
        page.wait_for_function("document.querySelector('#layer-select option[value=\"encoder.layer.11\"]') !== null")
        page.select_option("#layer-select", ["encoder.layer.11", "embedding"])
        page.set_input_files("#file-input", str(photo))
        page.click("#run")
        page.wait_for_selector('.layer[data-layer="encoder.layer.11"] canvas', timeout=60_000)
        block = page.locator('.layer[data-layer="encoder.layer.11"]')
        assert block.locator("canvas").count() == 64
        assert page.evaluate(
            "[...document.querySelectorAll('.layer[data-layer=\"encoder.layer.11\"] canvas')]"
            ".every(c => c.width === 16 && c.height === 16)"
        )
        assert "16×16 patches, 1 token(s) before them not drawn; first 64 of 384 features" in block.inner_text()
        assert page.locator('.layer[data-layer="embedding"] canvas.vector').count() == 1
        assert page.locator("#top5").is_hidden() or page.locator("#top5 li").count() == 0  # no labels: no top-5


def test_page_ranks_images_by_a_text_for_a_model_with_a_text_tower(sourced_server, photos, tmp_path):
    """CLIP: the search panel embeds the text and the images in one /v1/embeddings call and ranks them by cosine,
    in the order the API's own vectors give; DINOv2 takes no text, and the panel hides."""
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Chromium (apt-get install chromium; .ci/run installs it)")
    import base64

    import numpy as np
    import requests

    names = ["rocket.jpg", "grace_hopper.jpg", "chelsea.png"]
    for name in names:
        (tmp_path / name).write_bytes(photos[name])
    text = "a rocket on its launch pad"
    urls = [f"data:image/{n.rsplit('.', 1)[1]};base64,{base64.b64encode(photos[n]).decode()}" for n in names]
    answer = requests.post(
        f"{sourced_server.url}/v1/embeddings", json={"model": "clip_vit_b32", "input": [text, *urls]}, timeout=120
    ).json()
    vectors = np.asarray([item["embedding"] for item in answer["data"]])
    expected = [names[i] for i in np.argsort(-(vectors[1:] @ vectors[0]))]
    with opened_page(sourced_server.url) as page:
        assert page.locator("#search-panel").is_visible()
        page.set_input_files("#search-images", [str(tmp_path / name) for name in names])
        page.fill("#search-text", text)
        page.click("#search-run")
        page.wait_for_selector("#search-results li:nth-child(3)", timeout=60_000)
        ranked = [item.split(":")[0].strip() for item in page.locator("#search-results li").all_inner_texts()]
        assert ranked == expected
        page.select_option("#model-select", "dinov2_small")
        page.wait_for_function("document.querySelector('#search-panel').hidden")
