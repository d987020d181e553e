"""One normalization for the batch, int8 calibration and the explainer: torchvision's, to the bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from service.images.normalize import normalize, to_pixels
from tests.reference import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 17, 11, 3), dtype=np.uint8)


def test_it_is_torchvisions_normalization_bit_for_bit(pixels):
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([reference(Image.fromarray(image)) for image in pixels])
    got = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD, layout="nhwc")
    assert got.dtype == torch.float32 and got.shape == (3, 3, 17, 11)
    assert torch.equal(got, expected)
    nchw = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    assert torch.equal(normalize(nchw, IMAGENET_MEAN, IMAGENET_STD), expected)


def test_dtype_and_device_are_the_callers(pixels):
    half = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD, layout="nhwc", device="cpu", dtype=torch.bfloat16)
    full = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD, layout="nhwc")
    assert half.dtype == torch.bfloat16 and torch.equal(half, full.to(torch.bfloat16))


def test_to_pixels_undoes_it(pixels):
    batch = normalize(pixels, IMAGENET_MEAN, IMAGENET_STD, layout="nhwc")
    assert np.array_equal(to_pixels(batch, IMAGENET_MEAN, IMAGENET_STD).permute(0, 2, 3, 1).numpy(), pixels)
    black = normalize(torch.zeros((1, 3, 1, 1), dtype=torch.uint8), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(black.flatten(), (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)))
    assert to_pixels(black * 0 + 100, IMAGENET_MEAN, IMAGENET_STD).eq(255).all(), "clamped to the pixel range"


def test_usable_in_gradient_passes_after_inference_mode(pixels):
    """The constants are made once; made under inference mode first, they must still serve autograd."""
    with torch.inference_mode():
        normalize(pixels, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), layout="nhwc")
    batch = normalize(pixels, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), layout="nhwc").requires_grad_(True)
    (batch * 2 - torch.tensor(1.0)).sum().backward()
    assert batch.grad is not None


@pytest.mark.parametrize(
    ("array", "layout", "match"),
    [
        (np.zeros((1, 4, 4, 3), np.float32), "nhwc", "uint8"),
        (np.zeros((1, 4, 4, 3), np.uint8), "nchw", "3 channels"),
        (np.zeros((4, 4, 3), np.uint8), "nhwc", "uint8 with 3 channels"),
        (np.zeros((1, 3, 4, 4), np.uint8), "hwc", "layout must be one of"),
    ],
)
def test_what_it_refuses(array, layout, match):
    with pytest.raises(ValueError, match=match):
        normalize(array, IMAGENET_MEAN, IMAGENET_STD, layout=layout)
