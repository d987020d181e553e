"""`fast` preprocessing (the service's default): faster, and within the accuracy budget of `exact`.

Budget (issue #3): cosine ≥ 0.9995 on avgpool and fc, ≥ 0.995 on early layers, measured here on
the sample photos and on enlarged copies of them (where draft decoding actually scales down),
with the seeded test weights. `exact` itself is tested bit for bit in test_preprocess.py.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from service.images.preprocess import ImagePreprocessor, default_resize_kernel
from service.images.recipe import Preprocessing
from service.modeling.tap import LayerTap
from tests.images.test_preprocess import IMAGENET
from tests.reference import cosine, normalize

LAYERS = frozenset({"layer1", "layer2", "avgpool", "fc"})
needs_torch_kernel = pytest.mark.skipif(
    default_resize_kernel("fast", "bilinear") != "torch", reason="needs AVX2: torch's uint8 resize kernel"
)


@pytest.fixture(scope="module")
def photo_set(photos) -> dict[str, bytes]:
    out = dict(photos)
    for name in ("grace_hopper.jpg", "rocket.jpg"):
        source = Image.open(io.BytesIO(photos[name])).convert("RGB")
        for factor in (2, 4):
            large = source.resize((source.width * factor, source.height * factor), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            large.save(buffer, "JPEG", quality=92)
            out[f"{name}×{factor}"] = buffer.getvalue()
    return out


def fast() -> ImagePreprocessor:
    return ImagePreprocessor(IMAGENET, max_pixels=40_000_000, mode="fast")


def exact() -> ImagePreprocessor:
    return ImagePreprocessor(IMAGENET, max_pixels=40_000_000, mode="exact")


def test_fast_preprocessing_stays_within_the_accuracy_budget(photo_set, reference_model):
    tap = LayerTap(reference_model)
    try:
        for name, data in photo_set.items():
            x = normalize(np.stack([exact()(data), fast()(data)]))
            with torch.inference_mode():
                out = tap.capture(x, LAYERS)
            for layer in ("avgpool", "fc"):
                assert cosine(out[layer][0], out[layer][1]) >= 0.9995, (name, layer)
            for layer in ("layer1", "layer2"):
                assert cosine(out[layer][0], out[layer][1]) >= 0.995, (name, layer)
    finally:
        tap.remove()


def test_draft_decodes_large_jpegs_at_reduced_scale(photo_set):
    # 2048 × 2400 on disk: 1/8 scale is the smallest that still covers 256 on the short side
    assert fast().decode(photo_set["grace_hopper.jpg×4"]).size == (256, 300)
    # 640 × 427: halving would go below 256, so no reduction
    assert fast().decode(photo_set["rocket.jpg"]).size == (640, 427)
    assert exact().decode(photo_set["grace_hopper.jpg×4"]).size == (2048, 2400)
    assert fast().resize_path(256, 300) == "crop", "drafted to exactly the resize target: only cropped"


def resize_path(preprocessor: ImagePreprocessor, data: bytes) -> str:
    """How ``preprocessor`` turns the decoded ``data`` into its crop (torch, pillow, crop or box)."""
    return preprocessor.resize_path(*preprocessor.decode(data).size)


@needs_torch_kernel
def test_torch_resize_is_within_one_level_of_pillow(photos):
    """The only difference on PNGs and JPEGs too small to draft: the resize kernel, ≤ 1 level on < 1% of pixels."""
    for name in ("chelsea.png", "coffee.png", "rocket.jpg"):
        assert (resize_path(fast(), photos[name]), resize_path(exact(), photos[name])) == ("torch", "pillow"), name
        difference = np.abs(fast()(photos[name]).astype(int) - exact()(photos[name]).astype(int))
        assert difference.max() <= 1, name
        assert (difference > 0).mean() < 0.01, name


@needs_torch_kernel
def test_bicubic_entries_resize_with_torch_too(photos):
    bicubic = Preprocessing(resize=256, crop=224, interpolation="bicubic", mean=IMAGENET.mean, std=IMAGENET.std)
    preprocessor = ImagePreprocessor(bicubic, 40_000_000, mode="fast")
    assert preprocessor.resize_kernel == "torch" and resize_path(preprocessor, photos["coffee.png"]) == "torch"
    ours = preprocessor(photos["coffee.png"])
    reference = ImagePreprocessor(bicubic, 40_000_000, mode="exact")(photos["coffee.png"])
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


def test_large_sources_resize_with_pillow():
    """A 4.8 Mpx PNG is not copied into numpy at full size: Pillow resizes it, exactly as in exact mode."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1800, 2700, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    assert resize_path(fast(), buffer.getvalue()) == "pillow"
    np.testing.assert_array_equal(fast()(buffer.getvalue()), exact()(buffer.getvalue()))


def test_fast_mode_respects_exif_rotation(photos):
    # A large portrait JPEG stored sideways with an EXIF rotation: drafting must respect the stored shape.
    upright = Image.open(io.BytesIO(photos["grace_hopper.jpg"])).convert("RGB").resize((1024, 1200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    data = buffer.getvalue()
    assert cosine(fast()(data).astype(np.float32), exact()(data).astype(np.float32)) > 0.999


@pytest.mark.parametrize(
    ("size", "max_difference"),
    [
        ((256, 256), 0),  # already the resize target: a crop, no resampling
        ((300, 256), 0),  # the same, landscape
        ((3, 900), 0),  # elongated: Pillow's box path in both modes
        ((224, 224), 1),  # upsampled by torch in fast mode
        ((1, 1), 0),  # one pixel: every output pixel is that pixel
    ],
)
def test_fast_mode_shapes_match_exact(size, max_difference):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    ours, reference = fast()(buffer.getvalue()), exact()(buffer.getvalue())
    assert ours.shape == reference.shape == (224, 224, 3)
    assert ours.flags.c_contiguous and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= max_difference


def test_without_the_avx2_kernel_fast_mode_resizes_with_pillow(photos):
    for capability in ("DEFAULT", "NO AVX"):
        assert default_resize_kernel("fast", "bilinear", cpu_capability=capability) == "pillow"
    assert default_resize_kernel("fast", "bilinear", cpu_capability="AVX512") == "torch"
    assert default_resize_kernel("exact", "bilinear", cpu_capability="AVX2") == "pillow"
    pillow = ImagePreprocessor(IMAGENET, 40_000_000, mode="fast", resize_kernel="pillow")
    assert pillow.resize_kernel == "pillow" and resize_path(pillow, photos["chelsea.png"]) == "pillow"
    np.testing.assert_array_equal(pillow(photos["chelsea.png"]), exact()(photos["chelsea.png"]))


def test_the_torch_kernel_is_for_fast_mode_and_smooth_interpolations_only():
    nearest = Preprocessing(resize=256, crop=224, interpolation="nearest", mean=IMAGENET.mean, std=IMAGENET.std)
    assert default_resize_kernel("fast", "nearest", cpu_capability="AVX2") == "pillow"
    for spec, mode in ((IMAGENET, "exact"), (nearest, "fast")):
        with pytest.raises(ValueError, match="torch resize kernel is for fast mode"):
            ImagePreprocessor(spec, 40_000_000, mode=mode, resize_kernel="torch")
    with pytest.raises(ValueError, match="resize_kernel must be one of torch, pillow"):
        ImagePreprocessor(IMAGENET, 40_000_000, mode="fast", resize_kernel="cv2")


def test_nearest_interpolation_resizes_with_pillow(photos):
    nearest = Preprocessing(resize=256, crop=224, interpolation="nearest", mean=IMAGENET.mean, std=IMAGENET.std)
    ours = ImagePreprocessor(nearest, 40_000_000, mode="fast")(photos["chelsea.png"])
    np.testing.assert_array_equal(ours, ImagePreprocessor(nearest, 40_000_000, mode="exact")(photos["chelsea.png"]))


def test_unknown_mode_is_a_value_error_with_the_choices():
    with pytest.raises(ValueError, match="'exact' is bit-exact"):
        ImagePreprocessor(IMAGENET, 40_000_000, mode="quick")


@needs_torch_kernel
def test_request_threads_start_no_openmp_threads(photos):
    """Preprocessing runs in many request threads at once: a torch op that started an OpenMP
    team in each of them would multiply the process's threads (and oversubscribe the cores)."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    preprocess = fast()
    preprocess(photos["coffee.png"])  # any lazy initialisation in this thread first

    def worker():
        for data in photos.values():
            preprocess(data)
        barrier.wait()  # keep every thread alive while the threads are counted

    before = len(os.listdir("/proc/self/task"))
    barrier = threading.Barrier(9, timeout=60)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        barrier.wait()
        during = len(os.listdir("/proc/self/task"))
    finally:
        for thread in threads:
            thread.join()
        torch.set_num_threads(threads_before)
    assert during <= before + 8, f"{during - before} threads for 8 request threads"
