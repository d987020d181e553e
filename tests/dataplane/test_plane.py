"""The data plane with real models, without HTTP: building it from settings, routing by model, chunked batches,
output options, precision, a dead thread.

Planes are built as ``create_app`` builds them, with :meth:`DataPlane.from_settings`; faults and stalls
come in through the runners' public seams (:class:`RunnerSeams`), never by patching code.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import prometheus_client
import pytest
import torch
from PIL import Image

from service.core.errors import (
    InferenceFailed,
    InvalidImage,
    InvalidRequest,
    NotReady,
    Overloaded,
    StartupError,
    UnknownModel,
)
from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.dataplane.plane import DataPlane
from service.dataplane.pooling import OutputOptions, apply
from service.runners.seams import ForwardChunk, RunnerSeams
from tests.conftest import seeded_state_dict
from tests.reference import row_cosines


@contextmanager
def serving(settings: Settings, seams: RunnerSeams | None = None, timeout: float = 60) -> Iterator[DataPlane]:
    """A data plane built from ``settings``, its models loaded; closed on the way out."""
    plane = DataPlane.from_settings(settings, seams=seams)
    plane.start()
    try:
        assert plane.wait_ready(timeout), plane.failure
        yield plane
    finally:
        plane.close()


# ---- building a plane from the settings ------------------------------------------------------
def test_from_settings_builds_a_runner_per_model_and_starts_nothing(weights_file):
    plane = DataPlane.from_settings(Settings(models="resnet18, vit_b_16", weights="random", device="cpu"))
    try:
        assert list(plane.runners) == ["resnet18", "vit_b_16"] and plane.default_model == "resnet18"
        assert plane.state == "loading" and {r.state for r in plane.runners.values()} == {"loading"}
        assert plane.runner(None).name == "resnet18" and plane.runner("vit_b_16").entry.architecture == "vit_b_16"
        assert {r.weights.label for r in plane.runners.values()} == {"random:seed=0"}
        with pytest.raises(NotReady, match="loading"):
            plane.admit(None)
    finally:
        plane.close()


def test_from_settings_names_the_entries_when_a_model_has_none(weights_file):
    with pytest.raises(StartupError, match=r"no model entry 'vgg99' in .*; available: .*resnet18.*vit_b_16"):
        DataPlane.from_settings(Settings(models="resnet18,vgg99", weights="random", device="cpu"))


def test_one_weights_file_cannot_serve_several_models(weights_file):
    with pytest.raises(StartupError, match=r"names one file, but 2 of the models have no checkpoint of their own"):
        DataPlane.from_settings(Settings(models="resnet18,vit_b_16", weights=str(weights_file), device="cpu"))


def test_several_models_each_with_its_own_checkpoint(weights_file, tmp_path, photos):
    """Each entry's checkpoint wins over LAYERTAP_WEIGHTS, so one server serves several weight files."""
    for name, seed in (("resnet18", 1), ("resnet50", 2)):
        torch.save(seeded_state_dict(name, seed), tmp_path / f"{name}.pt")
        source = (DEFAULT_MODEL_REPOSITORY / f"{name}.toml").read_text()
        (tmp_path / f"{name}.toml").write_text(f'checkpoint = "{name}.pt"\n{source}')
    (tmp_path / "plain.toml").write_text((DEFAULT_MODEL_REPOSITORY / "resnet18.toml").read_text())
    settings = Settings(
        models="resnet18,resnet50,plain", model_repository=tmp_path, weights=str(weights_file), device="cpu"
    )
    plane = DataPlane.from_settings(settings)
    labels = {name: runner.weights.label.split("@")[0] for name, runner in plane.runners.items()}
    assert labels == {
        "resnet18": "file:resnet18.pt",
        "resnet50": "file:resnet50.pt",
        "plain": "file:resnet18-seeded.pt",
    }


def test_a_request_larger_than_the_batch_size_runs_in_chunks(weights_file, photos):
    passes: list[int] = []
    seams = RunnerSeams(before_pass=lambda chunk: passes.append(len(chunk.inputs)))
    with serving(Settings(weights=str(weights_file), device="cpu", max_batch_size=2), seams) as plane:
        passes.clear()  # the warm-up's
        names = ("rocket.jpg", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg")
        result = plane.extract([photos[name] for name in names], ("avgpool",))
        assert passes == [2, 2, 1]
        avgpool = result.features["avgpool"]
        assert avgpool.shape == (5, 512, 1, 1) and result.timings.batch_images == 5
        np.testing.assert_allclose(avgpool[4], avgpool[0], rtol=1e-4, atol=1e-5)
        single = plane.extract([photos["coffee.png"]], ("avgpool",)).features["avgpool"]
        np.testing.assert_allclose(avgpool[2], single[0], rtol=1e-4, atol=1e-5)


def test_unknown_models_and_default_layers(plane, photos):
    with pytest.raises(UnknownModel, match="models: resnet18"):
        plane.extract([photos["rocket.jpg"]], model="vgg99")
    with pytest.raises(InvalidRequest, match="no image"):
        plane.extract([])
    result = plane.extract([photos["rocket.jpg"]])  # no layers: the entry's default layer
    assert result.model == "resnet18" and list(result.features) == ["avgpool"]
    with pytest.raises(InvalidRequest, match="pool=cls takes the class token"):
        plane.extract([photos["rocket.jpg"]], ("layer4",), OutputOptions(pool="cls"))


# ---- output options --------------------------------------------------------------------------
def test_pooling_follows_the_layout_and_normalization():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 8, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(apply(maps, OutputOptions(pool="avg")), maps.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(apply(maps, OutputOptions(pool="max")), maps.max(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(apply(maps, OutputOptions(pool="avg"), "nhwc"), maps.mean(axis=(1, 2)), rtol=1e-6)
    tokens = rng.standard_normal((2, 7, 6)).astype(np.float32)
    np.testing.assert_allclose(apply(tokens, OutputOptions(pool="avg"), "tokens"), tokens.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(apply(tokens, OutputOptions(pool="cls"), "tokens"), tokens[:, 0])
    unit = apply(maps, OutputOptions(pool="avg", normalize=True))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)
    whole = apply(maps, OutputOptions(normalize=True))
    assert whole.shape == maps.shape
    np.testing.assert_allclose(np.linalg.norm(whole.reshape(3, -1), axis=1), 1, rtol=1e-5)
    vectors = rng.standard_normal((2, 10)).astype(np.float32)
    np.testing.assert_array_equal(apply(vectors, OutputOptions(pool="avg")), vectors)  # nothing to pool
    assert np.isfinite(apply(np.zeros((1, 4), np.float32), OutputOptions(normalize=True))).all()
    with pytest.raises(InvalidRequest, match="pool must be one of"):
        OutputOptions(pool="median")


def test_bfloat16_on_cpu_keeps_every_layer_within_cosine_0_9995_and_returns_float32(weights_file, photos, plane):
    """The CPU's fast dtype (AMX) is the default only because every layer stays this close to float32."""
    settings = Settings(weights=str(weights_file), device="cpu", dtype="bfloat16", preprocessing="exact")
    with serving(settings) as half:
        assert half.describe()["dtype"] == "bfloat16"
        images = list(photos.values())
        layers = tuple(call.name for call in plane.runner(None).layers)
        got = half.extract(images, layers).features
        full = plane.extract(images, layers).features
        for name in layers:
            assert got[name].dtype == np.float32
            assert row_cosines(got[name], full[name]).min() >= 0.9995, name


class Fatal(BaseException):
    """Escapes the batch's error handling, as a crash of the model thread itself would."""


def test_a_dead_model_thread_fails_requests_at_once_and_turns_health_red(weights_file, photos):
    armed = threading.Event()  # after the warm-up: a crash at load is a failed load, not a dead thread

    def crash(chunk: ForwardChunk) -> None:
        if armed.is_set():
            raise Fatal("simulated")

    with serving(Settings(weights=str(weights_file), device="cpu"), RunnerSeams(before_pass=crash)) as plane:
        armed.set()
        started = time.monotonic()
        with pytest.raises(InferenceFailed, match="thread stopped"):
            plane.extract([photos["rocket.jpg"]], ("fc",))
        assert time.monotonic() - started < 5, "no waiting for the deadline"
        assert plane.state == "failed" and "Fatal" in plane.failure  # /health: 503, with this reason
        with pytest.raises(NotReady, match="failed"):  # /features: 503 not_ready
            plane.extract([photos["rocket.jpg"]], ("fc",))


# ---- several models in one server -------------------------------------------------------------
class Stall:
    """A ``before_pass`` seam that holds the passes of one model (``model``) until ``gate`` opens."""

    def __init__(self):
        self.model: str | None = None
        self.entered, self.gate = threading.Event(), threading.Event()

    def __call__(self, chunk: ForwardChunk) -> None:
        if chunk.model == self.model:
            self.entered.set()
            assert self.gate.wait(30)


@pytest.fixture(scope="module")
def two_models() -> Iterator[tuple[DataPlane, Stall]]:
    stall = Stall()
    settings = Settings(models="resnet18,vit_b_16", weights="random", device="cpu", max_queue_images=4,
                        max_batch_size=4, max_images_per_request=4)  # fmt: skip
    with serving(settings, RunnerSeams(before_pass=stall), timeout=120) as plane:
        yield plane, stall


def images_through(model: str) -> float:
    return prometheus_client.REGISTRY.get_sample_value("layertap_images_total", {"model": model}) or 0.0


def test_several_models_answer_by_name_with_their_own_defaults(two_models, photos):
    plane, _ = two_models
    assert plane.state == "ready" and {r.name: r.state for r in plane.runners.values()} == {
        "resnet18": "ready",
        "vit_b_16": "ready",
    }
    info = plane.describe()
    assert (info["model"], info["models"], info["default_model"]) == ("resnet18", ["resnet18", "vit_b_16"], "resnet18")
    vit = plane.describe("vit_b_16")
    assert (vit["model"], vit["default_layer"], vit["classifier"], vit["layers"]) == (
        "vit_b_16",
        "encoder",
        "heads",
        139,
    )
    image = photos["rocket.jpg"]
    before = images_through("vit_b_16"), images_through("resnet18")
    default = plane.extract([image])
    assert default.model == "resnet18" and default.features["avgpool"].shape == (1, 512, 1, 1)
    tokens = plane.extract([image], options=OutputOptions(pool="cls"), model="vit_b_16")
    assert tokens.model == "vit_b_16" and tokens.features["encoder"].shape == (1, 768)
    runner, calls = plane.shapes("vit_b_16", 1, 224, 224)
    layouts = {call.name: runner.layout_of(call.name) for call in calls}
    assert runner.name == "vit_b_16" and (layouts["encoder"], layouts["conv_proj"]) == ("tokens", "nchw")
    with pytest.raises(InvalidRequest, match="cannot take a 200×224 input"):
        plane.shapes("vit_b_16", 1, 200, 224)
    assert (runner.classifier, runner.weights.categories) == ("heads", None)
    with pytest.raises(UnknownModel, match="models: resnet18, vit_b_16"):
        plane.extract([image], model="vgg99")
    assert (images_through("vit_b_16"), images_through("resnet18")) == (before[0] + 1, before[1] + 1)


def test_a_busy_model_does_not_hold_up_another(two_models, photos):
    plane, stall = two_models
    image = photos["rocket.jpg"]

    def extract(model: str):
        return plane.extract([image], model=model)

    stall.model = "vit_b_16"
    try:
        with ThreadPoolExecutor(6) as pool:
            busy = pool.submit(extract, "vit_b_16")
            assert stall.entered.wait(30)
            queued = [pool.submit(extract, "vit_b_16") for _ in range(4)]  # the ViT queue holds 4 images
            wait = time.monotonic() + 10
            while plane.describe("vit_b_16")["queue_images"] < 4:
                assert time.monotonic() < wait
                time.sleep(0.01)
            with pytest.raises(Overloaded) as refused:  # after LAYERTAP_MAX_QUEUE_WAIT_MS in line
                extract("vit_b_16")
            assert refused.value.retry_after_s == 1
            assert extract("resnet18").model == "resnet18", "the other model's thread and queue are its own"
            stall.gate.set()
            assert busy.result(30).model == "vit_b_16" and all(f.result(30).model == "vit_b_16" for f in queued)
    finally:
        stall.model = None
        stall.gate.set()


def test_jpegs_decoded_in_batches_by_the_model_thread_match_the_cpu_path_and_a_bad_one_fails_alone(
    weights_file, photos, plane
):
    """LAYERTAP_JPEG_DECODER=device (the default on CUDA), on the CPU: the same code as nvjpeg's, with libjpeg."""
    settings = Settings(weights=str(weights_file), device="cpu", dtype="float32", jpeg_decoder="device")
    stall = Stall()
    with serving(settings, RunnerSeams(before_pass=stall)) as device:
        assert device.describe()["preprocessing"]["jpeg_decoder"] == "device"
        turned = io.BytesIO()
        exif = Image.Exif()
        exif[0x0112] = 6  # a phone photo taken upright: stored sideways, rotated on display
        Image.open(io.BytesIO(photos["rocket.jpg"])).save(turned, "JPEG", quality=95, exif=exif)
        images = [*photos.values(), turned.getvalue()]  # two PNGs take the CPU path in the same batch
        layers = ("layer1", "avgpool")
        got = device.extract(images, layers).features
        exact = plane.extract(images, layers).features
        assert row_cosines(got["avgpool"], exact["avgpool"]).min() >= 0.9995
        assert row_cosines(got["layer1"], exact["layer1"]).min() >= 0.995

        good = photos["grace_hopper.jpg"]
        # Header intact, scan data random: it reaches the device's decoder, which fails its batch; the
        # batch is decoded again image by image, and Pillow refuses this one.
        scan = good.index(b"\xff\xda")
        header_end = scan + 2 + int.from_bytes(good[scan + 2 : scan + 4], "big")
        damaged = good[:header_end] + np.random.default_rng(0).bytes(4000) + b"\xff\xd9"
        with ThreadPoolExecutor(3) as pool:  # two requests in one batch: only the bad one fails
            stall.model = "resnet18"  # hold the model thread on a first request's pass...
            blocker = pool.submit(device.extract, [good], ("avgpool",))
            assert stall.entered.wait(30)
            bad = pool.submit(device.extract, [damaged], ("avgpool",))
            fine = pool.submit(device.extract, [good], ("avgpool",))
            queued = time.monotonic() + 30  # ...until both are queued: the thread then takes them as one batch
            while device.runner(None).describe()["queue_images"] < 2 and time.monotonic() < queued:
                time.sleep(0.01)
            assert device.runner(None).describe()["queue_images"] == 2
            stall.model = None
            stall.gate.set()
            blocker.result(30)
            with pytest.raises(InvalidImage):
                bad.result(30)
            at = list(photos).index("grace_hopper.jpg")
            assert row_cosines(fine.result(30).features["avgpool"], exact["avgpool"][at : at + 1]).min() >= 0.9995
        with pytest.raises(InvalidImage):  # one bad image fails its whole request, as on the CPU path
            device.extract([good, damaged], ("avgpool",))


def test_encoded_pixel_and_tensor_images_share_one_batch(plane, photos):
    """All three image forms in one forward pass: each row as if it had come alone, as an upload."""
    import torchvision

    from service.images.sources import Pixels, Tensor

    transform = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    chelsea = Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB")
    tensor = Tensor(transform(Image.open(io.BytesIO(photos["rocket.jpg"])).convert("RGB")).numpy())
    images = [photos["grace_hopper.jpg"], Pixels(np.asarray(chelsea)), tensor]
    result = plane.extract(images, ("layer2", "fc"), {"layer2": OutputOptions(pool="avg")})
    assert result.timings.batch_images >= 3
    assert result.features["layer2"].shape == (3, 128) and result.features["fc"].shape == (3, 1000)
    alone = plane.extract([photos[n] for n in ("grace_hopper.jpg", "chelsea.png", "rocket.jpg")], ("layer2", "fc"))
    np.testing.assert_allclose(result.features["fc"], alone.features["fc"], rtol=1e-4, atol=1e-4)
    pooled = alone.features["layer2"].mean(axis=(2, 3))
    np.testing.assert_allclose(result.features["layer2"], pooled, rtol=1e-4, atol=1e-5)


def test_answers_in_flight_are_bounded_together_and_released_once():
    """Two answers of 60 values fit under 100 only one at a time; a release frees the room, a second does nothing."""
    from service.core.errors import Overloaded
    from service.dataplane.budget import AnswersInFlight

    answers = AnswersInFlight(capacity=100, wait_s=0.05)
    release = answers.hold(60)
    with pytest.raises(Overloaded, match="LAYERTAP_MAX_OUTPUT_VALUES"):
        answers.hold(60)
    release()
    release()
    assert answers.held == 0
    releases = []
    waiting = threading.Thread(target=lambda: releases.append(answers.hold(60)))
    held = answers.hold(60)
    answers.wait_s = 5
    waiting.start()
    held()  # the one waiting in line gets the room
    waiting.join(5)
    assert answers.held == 60 and len(releases) == 1
    releases[0]()
    answers.hold(1000)  # more than the capacity is capped at it: a request is never refused for its size here
    assert answers.held == 100
