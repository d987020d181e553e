"""JPEG draft decoding (the default): faster, and within the accuracy budget of the reference pipeline.

Budget (issue #3): cosine ≥ 0.9995 on avgpool and fc, ≥ 0.995 on early layers, measured here on
the sample photos and on enlarged copies of them (where draft decoding actually scales down),
with the seeded test weights.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from service.capture import LayerTap
from service.preprocess import ImagePreprocessor
from tests.reference import cosine, normalize
from tests.test_preprocess import IMAGENET

LAYERS = frozenset({"layer1", "layer2", "avgpool", "fc"})


@pytest.fixture(scope="module")
def photo_set(photos) -> dict[str, bytes]:
    out = {}
    for name in ("grace_hopper.jpg", "rocket.jpg"):
        out[name] = photos[name]
        source = Image.open(io.BytesIO(photos[name])).convert("RGB")
        for factor in (2, 4):
            large = source.resize((source.width * factor, source.height * factor), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            large.save(buffer, "JPEG", quality=92)
            out[f"{name}×{factor}"] = buffer.getvalue()
    return out


def test_draft_decoding_stays_within_the_accuracy_budget(photo_set, reference_model):
    exact = ImagePreprocessor(IMAGENET, max_pixels=40_000_000, jpeg_draft=False)
    draft = ImagePreprocessor(IMAGENET, max_pixels=40_000_000, jpeg_draft=True)
    tap = LayerTap(reference_model)
    try:
        for name, data in photo_set.items():
            x = normalize(np.stack([exact(data), draft(data)]))
            with torch.inference_mode():
                out = tap.capture(x, LAYERS)
            for layer in ("avgpool", "fc"):
                assert cosine(out[layer][0], out[layer][1]) >= 0.9995, (name, layer)
            for layer in ("layer1", "layer2"):
                assert cosine(out[layer][0], out[layer][1]) >= 0.995, (name, layer)
    finally:
        tap.remove()


def test_draft_decodes_large_jpegs_at_reduced_scale(photo_set, monkeypatch):
    draft = ImagePreprocessor(IMAGENET, max_pixels=40_000_000, jpeg_draft=True)
    decoded_sizes = []
    original = ImagePreprocessor._decode

    def spy(self, image):
        result = original(self, image)
        decoded_sizes.append(result.size)
        return result

    monkeypatch.setattr(ImagePreprocessor, "_decode", spy)
    draft(photo_set["grace_hopper.jpg×4"])  # 2048 × 2400 on disk
    assert decoded_sizes == [(256, 300)]  # 1/8 scale: the smallest that still covers 256 on the short side
    draft(photo_set["rocket.jpg"])  # 640 × 427: halving would go below 256, so no reduction
    assert decoded_sizes[-1] == (640, 427)


def test_draft_leaves_png_and_exif_rotation_alone(photos):
    draft = ImagePreprocessor(IMAGENET, max_pixels=40_000_000, jpeg_draft=True)
    exact = ImagePreprocessor(IMAGENET, max_pixels=40_000_000, jpeg_draft=False)
    np.testing.assert_array_equal(draft(photos["chelsea.png"]), exact(photos["chelsea.png"]))
    # A large portrait JPEG stored sideways with an EXIF rotation: drafting must respect the stored shape.
    upright = Image.open(io.BytesIO(photos["grace_hopper.jpg"])).convert("RGB").resize((1024, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    data = buffer.getvalue()
    assert cosine(draft(data).astype(np.float32), exact(data).astype(np.float32)) > 0.999
