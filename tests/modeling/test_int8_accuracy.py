"""The int8 accuracy report (bench/int8_accuracy.py): runs on any weights; with ImageNet's, top-1 must agree."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from bench.int8_accuracy import compare, report, variants
from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.modeling.entries import load_entry
from service.modeling.weights import imagenet_cache_path

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def real_imagenet_checkpoint() -> bool:
    """True when torchvision's checkpoint is in the torch cache and its sha256 matches the prefix in its name."""
    path = imagenet_cache_path(load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18"))
    if not path.is_file():
        return False
    prefix = path.stem.rsplit("-", 1)[-1]
    return hashlib.sha256(path.read_bytes()).hexdigest().startswith(prefix)


def test_variants_are_the_photo_mirrored_and_zoomed(photos):
    original, mirrored, zoomed = variants(photos["rocket.jpg"])
    assert original == photos["rocket.jpg"]
    source = np.asarray(Image.open(io.BytesIO(original)).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(mirrored))), source[:, ::-1])
    assert Image.open(io.BytesIO(zoomed)).size == (448, 298)  # the central 70% of 640 × 427, rounded down


def test_report_on_seeded_weights(weights_file, photos, tmp_path):
    images = [image for photo in photos.values() for image in variants(photo)]
    result = compare(str(weights_file), images, tmp_path)
    assert result.images == len(images) == 12
    assert {"relu", "layer1", "avgpool", "fc"} <= set(result.cosine_min) and "bn1" not in result.cosine_min
    # The cosines' floors are held in tests/modeling/test_int8.py, through the service: here, the report's shape.
    assert all(0 < cosine <= 1 for cosine in result.cosine_min.values())
    assert len(result.top1_float) == len(result.top1_int8) == 12
    text = report(result, [f"image {i}" for i in range(12)])
    assert "top-1 agreement" in text and all(f"| image {i} |" in text for i in range(12))


def test_int8_top1_agrees_with_float32_on_imagenet_weights(photos, tmp_path):
    """Thresholds not yet checked against real weights (none could be downloaded where this was written)."""
    if not real_imagenet_checkpoint():
        pytest.skip("needs the ImageNet checkpoint in the torch cache (python -m service weights download)")
    images = [image for photo in photos.values() for image in variants(photo)]
    result = compare("imagenet", images, tmp_path)
    originals = slice(0, None, 3)
    assert result.top1_int8[originals] == result.top1_float[originals]
    assert result.agreement >= 0.9
    assert result.cosine_min["avgpool"] >= 0.99
