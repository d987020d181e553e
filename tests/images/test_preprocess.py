"""Decoding and preprocessing: equal to torchvision's reference, every common format, and safe on bad input."""

from __future__ import annotations

import io
import time
import zlib

import numpy as np
import pytest
import torchvision.transforms.functional as F
from PIL import Image

from service.core.errors import ImageTooLarge, InvalidImage
from service.images.preprocess import ImagePreprocessor
from service.images.recipe import Preprocessing
from tests.conftest import encode, gradient_image

IMAGENET = Preprocessing(
    resize=256, crop=224, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


@pytest.fixture
def preprocess() -> ImagePreprocessor:
    return ImagePreprocessor(IMAGENET, max_pixels=40_000_000)


def reference_pixels(image: Image.Image) -> np.ndarray:
    """torchvision's ImageClassification up to (not including) the float conversion."""
    return np.asarray(F.center_crop(F.resize(image.convert("RGB"), [256]), [224]))


def assert_same_pixels(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape == (224, 224, 3)
    np.testing.assert_array_equal(ours, reference)


def assert_close_pixels(ours: np.ndarray, reference: np.ndarray) -> None:
    """For the elongated-image path: one resampling of a box, at most one level off on few pixels."""
    assert ours.shape == reference.shape == (224, 224, 3)
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.001


def test_real_photos_equal_torchvision_reference(preprocess, photos):
    for data in photos.values():
        assert_same_pixels(preprocess(data), reference_pixels(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize(
    ("fmt", "mode", "params"),
    [
        ("JPEG", "RGB", {"quality": 95}),
        ("JPEG", "RGB", {"quality": 95, "progressive": True}),
        ("JPEG", "L", {}),
        ("PNG", "RGB", {}),
        ("PNG", "L", {}),
        ("PNG", "P", {}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("BMP", "RGB", {}),
        ("TIFF", "RGB", {}),
    ],
)
def test_formats_and_modes(preprocess, fmt, mode, params):
    image = gradient_image(300, 200, mode)
    data = encode(image, fmt, **params)
    assert_same_pixels(preprocess(data), reference_pixels(Image.open(io.BytesIO(data))))


def test_rgba_drops_alpha_like_convert_rgb(preprocess):
    image = gradient_image(300, 200, "RGBA")
    image.putalpha(Image.new("L", image.size, 40))
    data = encode(image, "PNG")
    assert_same_pixels(preprocess(data), reference_pixels(image))


def test_cmyk_jpeg(preprocess):
    image = gradient_image(300, 200).convert("CMYK")
    data = encode(image, "JPEG", quality=95)
    out = preprocess(data)
    assert_same_pixels(out, reference_pixels(Image.open(io.BytesIO(data))))
    # and it is the picture, not its inverse
    rgb = reference_pixels(gradient_image(300, 200)).astype(int)
    assert np.abs(out.astype(int) - rgb).mean() < 8


def test_sixteen_bit_grayscale_is_scaled_not_clipped(preprocess):
    levels = (np.linspace(0, 65535, 300)[None, :].repeat(200, axis=0)).astype(np.uint16)
    data = encode(Image.fromarray(levels), "PNG")
    out = preprocess(data)
    eight_bit = Image.fromarray((levels >> 8).astype(np.uint8), "L")
    assert_same_pixels(out, reference_pixels(eight_bit))
    # The centre of a full-range ramp spans mid-greys; clipping to 255 would make it white.
    assert 40 < out.min() and out.max() < 215 and 110 < out.mean() < 145


def test_exif_orientation_is_applied_before_resizing(preprocess):
    upright = gradient_image(200, 300)  # portrait
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # landscape pixels on disk ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90° clockwise to display"
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = preprocess(data)
    expected = reference_pixels(upright)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 3
    ignored = reference_pixels(stored)
    assert np.abs(out.astype(int) - ignored.astype(int)).mean() > 20


def test_gif_uses_first_frame(preprocess):
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    buffer = io.BytesIO()
    red.save(buffer, "GIF", save_all=True, append_images=[blue], duration=100)
    out = preprocess(buffer.getvalue())
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 50


@pytest.mark.parametrize("size", [(1, 1), (1, 1000), (2000, 2), (3, 7)])
def test_tiny_and_elongated_images(preprocess, size):
    image = gradient_image(*size)
    data = encode(image, "PNG")
    started = time.perf_counter()
    out = preprocess(data)
    assert out.shape == (224, 224, 3)
    assert time.perf_counter() - started < 5  # no 256 × 1,536,000 intermediate
    assert_close_pixels(out, reference_pixels(image))


def test_empty_truncated_and_garbage_inputs_are_invalid(preprocess, photos):
    jpeg = photos["grace_hopper.jpg"]
    png = photos["chelsea.png"]
    for bad, pattern in [
        (b"", "empty"),
        (b"hello, this is not an image", "cannot identify"),
        (b"<html><body>hi</body></html>", "cannot identify"),
        (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        (png[: len(png) // 3], "truncated or corrupt"),
        (png[:40], "truncated|corrupt|header|cannot identify"),
    ]:
        with pytest.raises(InvalidImage, match=pattern):
            preprocess(bad)


def test_unlisted_formats_are_refused(preprocess):
    data = encode(gradient_image(32, 32), "PPM")
    with pytest.raises(InvalidImage, match="supported formats are JPEG"):
        preprocess(data)


def header_only_png(width: int, height: int, color_type: int = 0) -> bytes:
    """A valid PNG header (checksums right) claiming ``width``×``height``, with no pixel data at all: any
    attempt to decode it fails as truncated, so an ImageTooLarge proves the limit came before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, color_type, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_header_only_image_fails_as_truncated_when_under_the_limits(preprocess):
    """The premise of the limit tests below: decoding a header-only PNG is an InvalidImage, not ImageTooLarge."""
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        preprocess(header_only_png(100, 100))


def test_pixel_limit_is_enforced_before_decoding():
    preprocess = ImagePreprocessor(IMAGENET, max_pixels=1_000_000)
    with pytest.raises(ImageTooLarge, match="2000×1000 = 2,000,000 pixels, over the limit of 1,000,000"):
        preprocess(header_only_png(2000, 1000))


@pytest.mark.parametrize(
    "side, message",
    [
        (10_000, "10000×10000 = 100,000,000 pixels, over the limit"),  # Pillow only warns at 100 Mpx: ours refuses
        (100_000, "image refused before decoding: Image size"),  # 10 gigapixels: Pillow's own refusal, mapped
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_headers_are_refused_before_decoding(preprocess, side, message):
    with pytest.raises(ImageTooLarge, match=message):
        preprocess(header_only_png(side, side))


def test_absurd_aspect_ratios_are_refused_before_decoding(preprocess):
    for size in [(1, 1001), (100_000, 1), (5000, 3)]:
        with pytest.raises(InvalidImage, match="aspect ratio over 1000:1"):
            preprocess(encode(Image.new("L", size), "PNG"))


def test_decoded_pixels_take_the_upload_path_and_its_limits(preprocess):
    image = gradient_image(640, 427)
    assert_same_pixels(preprocess.from_pixels(np.asarray(image)), reference_pixels(image))
    small = ImagePreprocessor(IMAGENET, max_pixels=1_000_000)
    with pytest.raises(ImageTooLarge, match="over the limit of 1,000,000"):
        small.from_pixels(np.zeros((1000, 1001, 3), np.uint8))
    with pytest.raises(InvalidImage, match="aspect ratio"):
        preprocess.from_pixels(np.zeros((1, 1001, 3), np.uint8))
    with pytest.raises(InvalidImage, match=r"uint8 \(height, width, 3\)"):
        preprocess.from_pixels(np.zeros((10, 10, 4), np.uint8))


def test_decoded_bytes_are_limited_from_the_header_by_mode():
    """Same pixels, other bytes: an RGBA PNG is 4 bytes a pixel once decoded, an 8-bit grayscale one 1."""
    preprocess = ImagePreprocessor(IMAGENET, max_pixels=40_000_000, max_decoded_bytes=1_000_000)
    with pytest.raises(ImageTooLarge, match=r"2,000,000 bytes once decoded, over the limit of 1,000,000"):
        preprocess(header_only_png(1000, 500, color_type=6))  # RGBA: refused before any decoding
    floats = encode(Image.new("F", (1000, 500)), "TIFF")  # 500,000 px: 2,000,000 bytes decoded
    with pytest.raises(ImageTooLarge, match=r"2,000,000 bytes once decoded"):
        preprocess(floats)
    assert preprocess(encode(Image.new("L", (1000, 500)), "PNG")).shape == (224, 224, 3)  # 500,000 bytes


@pytest.mark.parametrize("mode", ["L", "I;16", "F"])
@pytest.mark.parametrize("processing", ["exact", "fast"])
def test_grayscale_stays_one_channel_until_the_crop_and_equals_rgb_first(mode, processing):
    """Resampled as one channel and repeated after the crop: the same pixels as the RGB image resized
    (the reference: 8 bits as the service scales them, made RGB first, then torchvision's transforms)."""
    rng = np.random.default_rng(0)
    values = {"L": rng.integers(0, 256, (427, 640)).astype(np.uint8),
              "I;16": rng.integers(0, 65536, (427, 640)).astype(np.uint16),
              "F": rng.uniform(-20, 300, (427, 640)).astype(np.float32)}[mode]  # fmt: skip
    if mode == "I;16":
        eight_bit = (values >> 8).astype(np.uint8)
    else:
        eight_bit = np.clip(values, 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(values), "TIFF" if mode == "F" else "PNG")
    ours = ImagePreprocessor(IMAGENET, 40_000_000, processing)(data)
    rgb_first = ImagePreprocessor(IMAGENET, 40_000_000, processing).from_pixels(
        np.asarray(Image.fromarray(eight_bit, "L").convert("RGB"))
    )
    np.testing.assert_array_equal(ours, rgb_first)
    if processing == "exact":
        assert_same_pixels(ours, reference_pixels(Image.fromarray(eight_bit, "L")))


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(preprocess):
    photo = encode(gradient_image(64, 48), "JPEG")
    progressive = io.BytesIO()
    gradient_image(64, 48).save(progressive, "JPEG", progressive=True)
    assert preprocess(progressive.getvalue()).shape == (224, 224, 3)  # a real progressive JPEG: ~10 scans
    bomb = photo + b"\xff\xda\x00\x02" * 101  # 101 more scan markers
    with pytest.raises(InvalidImage, match="102 scans, over the 100"):
        preprocess(bomb)
