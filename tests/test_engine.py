"""The engine under pressure: shared batches, backpressure, deadlines, failed batches, output options."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.app import create_app
from service.engine import Engine
from service.errors import DeadlineExceeded, InferenceFailed, Overloaded
from service.postprocess import OutputOptions, apply
from service.settings import Settings


@pytest.fixture
def gated_engine(weights_file, monkeypatch):
    """An engine whose forward passes wait for `gate`, and which counts them."""
    gate = threading.Event()
    calls: list[int] = []
    original = Engine._forward

    def gated_forward(self, pixels, wanted):
        if self.ready:  # let the warm-up through
            calls.append(len(pixels))
            assert gate.wait(30)
        return original(self, pixels, wanted)

    monkeypatch.setattr(Engine, "_forward", gated_forward)

    def make(**overrides) -> Engine:
        settings = Settings(weights=str(weights_file), device="cpu", **overrides)
        engine = create_app(settings).extensions["layertap.engine"]
        assert engine.wait_ready(60)
        made.append(engine)
        return engine

    made: list[Engine] = []
    yield make, gate, calls
    gate.set()
    for engine in made:
        engine.close()


def wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_full_queue_is_429_at_once(gated_engine, photos):
    make, gate, calls = gated_engine
    engine = make(max_queue_images=2, max_images_per_request=1, max_batch_size=1)
    image = photos["rocket.jpg"]
    with ThreadPoolExecutor(3) as pool:
        running = pool.submit(engine.extract, [image], ("fc",))
        wait_for(lambda: len(calls) == 1)  # the model thread is busy with the first request
        queued = [pool.submit(engine.extract, [image], ("fc",)) for _ in range(2)]
        wait_for(lambda: engine._waiting_images == 2)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            engine.extract([image], ("fc",))
        assert time.monotonic() - started < 1
        assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
        gate.set()
        for future in [running, *queued]:
            assert future.result(30).features["fc"].shape == (1, 1000)
    assert engine._waiting_images == 0


def test_expired_work_is_answered_503_and_never_computed(gated_engine, photos):
    make, gate, calls = gated_engine
    engine = make(request_timeout_s=0.5, max_batch_size=1)
    image = photos["rocket.jpg"]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(engine.extract, [image], ("fc",))
        wait_for(lambda: len(calls) == 1)
        with pytest.raises(DeadlineExceeded):
            engine.extract([image], ("fc",))  # waits behind the gated pass, past its deadline
        with pytest.raises(DeadlineExceeded):
            first.result(30)
        gate.set()
        time.sleep(0.3)
    assert len(calls) == 1, "the expired request must not reach the model"
    assert engine.extract([image], ("fc",)).features["fc"].shape == (1, 1000)


def test_a_failed_batch_fails_only_its_own_requests(weights_file, monkeypatch, photos):
    engine = create_app(Settings(weights=str(weights_file), device="cpu")).extensions["layertap.engine"]
    assert engine.wait_ready(60)
    original = Engine._forward
    failures = iter([True])

    def flaky(self, pixels, wanted):
        if next(failures, False):
            raise RuntimeError("simulated kernel failure")
        return original(self, pixels, wanted)

    monkeypatch.setattr(Engine, "_forward", flaky)
    try:
        with pytest.raises(InferenceFailed, match="simulated kernel failure") as failed:
            engine.extract([photos["rocket.jpg"]], ("fc",))
        assert failed.value.status == 500
        assert engine.extract([photos["rocket.jpg"]], ("fc",)).features["fc"].shape == (1, 1000)
        assert engine.ready
    finally:
        engine.close()


def test_requests_for_different_layers_share_one_pass(gated_engine, photos):
    make, gate, calls = gated_engine
    engine = make(max_batch_size=8, max_batch_delay_ms=50)
    image = photos["chelsea.png"]
    layer_sets = [("fc",), ("layer1",), ("layer2.1.bn2", "avgpool"), ("bn1",)]
    with ThreadPoolExecutor(5) as pool:
        blocker = pool.submit(engine.extract, [image], ("fc",))
        wait_for(lambda: len(calls) == 1)
        futures = [pool.submit(engine.extract, [image], layers) for layers in layer_sets]
        wait_for(lambda: engine._waiting_images == 4)
        gate.set()
        results = [f.result(30) for f in futures]
        blocker.result(30)
    assert calls == [1, 4], "the four waiting requests should run as one batch"
    for layers, result in zip(layer_sets, results, strict=True):
        assert tuple(result.features) == layers
        assert result.timings.batch_images == 4
    alone = engine.extract([image], ("layer2.1.bn2",)).features["layer2.1.bn2"]
    np.testing.assert_allclose(results[2].features["layer2.1.bn2"], alone, rtol=1e-4, atol=1e-4)


def test_a_request_larger_than_the_batch_size_runs_in_chunks(gated_engine, photos):
    make, gate, _ = gated_engine
    gate.set()
    engine = make(max_batch_size=2)
    passes: list[int] = []
    for tap in (engine._tap, engine._fast_tap):
        tap.capture = lambda x, wanted, capture=tap.capture: passes.append(len(x)) or capture(x, wanted)
    images = [photos[name] for name in ("rocket.jpg", "chelsea.png", "coffee.png", "grace_hopper.jpg", "rocket.jpg")]
    result = engine.extract(images, ("avgpool",))
    assert passes == [2, 2, 1]
    assert result.features["avgpool"].shape == (5, 512, 1, 1)
    np.testing.assert_allclose(result.features["avgpool"][4], result.features["avgpool"][0], rtol=1e-4, atol=1e-5)
    single = engine.extract([photos["coffee.png"]], ("avgpool",)).features["avgpool"]
    np.testing.assert_allclose(result.features["avgpool"][2], single[0], rtol=1e-4, atol=1e-5)


# ---- output options --------------------------------------------------------------------------
def test_pooling_and_normalization():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 8, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(apply(maps, OutputOptions(pool="avg")), maps.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(apply(maps, OutputOptions(pool="max")), maps.max(axis=(2, 3)), rtol=1e-6)
    unit = apply(maps, OutputOptions(pool="avg", normalize=True))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)
    whole = apply(maps, OutputOptions(normalize=True))
    assert whole.shape == maps.shape
    np.testing.assert_allclose(np.linalg.norm(whole.reshape(3, -1), axis=1), 1, rtol=1e-5)
    vectors = rng.standard_normal((2, 10)).astype(np.float32)
    np.testing.assert_array_equal(apply(vectors, OutputOptions(pool="avg")), vectors)  # nothing to pool
    assert np.isfinite(apply(np.zeros((1, 4), np.float32), OutputOptions(normalize=True))).all()
    with pytest.raises(ValueError, match="pool must be one of"):
        OutputOptions(pool="median")


def test_output_options_over_http(client, photos):
    data = photos["grace_hopper.jpg"]
    raw = client.post("/features?layers=layer4,fc&encoding=base64", data=data, content_type="image/jpeg").json
    feature = raw["features"]["layer4"]
    assert (feature["dtype"], feature["byteorder"], feature["encoding"]) == ("float32", "little", "base64")
    layer4 = np.frombuffer(base64.b64decode(feature["data"]), "<f4").reshape(feature["shape"])
    assert layer4.shape == (1, 512, 7, 7)
    as_json = client.post("/features?layers=layer4", data=data, content_type="image/jpeg").json
    np.testing.assert_array_equal(layer4, np.asarray(as_json["features"]["layer4"]["data"], dtype=np.float32))

    pooled = client.post("/features?layers=layer4&pool=avg&normalize=true", data=data, content_type="image/jpeg").json
    vector = np.asarray(pooled["features"]["layer4"]["data"], dtype=np.float32)
    assert pooled["features"]["layer4"]["shape"] == [1, 512]
    expected = layer4.mean(axis=(2, 3))
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("query", ["pool=median", "encoding=xml", "normalize=maybe"])
def test_bad_output_options_are_400(client, photos, query):
    response = client.post(f"/features?{query}", data=photos["rocket.jpg"], content_type="image/jpeg")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"


def test_half_precision_setting_runs_on_cpu_and_returns_float32(weights_file, photos, engine):
    """The GPU options must not break a CPU-only machine: bfloat16 runs (slowly) and outputs float32."""
    app = create_app(Settings(weights=str(weights_file), device="cpu", dtype="bfloat16", preprocessing="exact"))
    half = app.extensions["layertap.engine"]
    try:
        assert half.wait_ready(60), half.failure
        assert half.describe()["dtype"] == "bfloat16"
        got = half.extract([photos["rocket.jpg"]], ("avgpool",)).features["avgpool"]
        assert got.dtype == np.float32
        full = engine.extract([photos["rocket.jpg"]], ("avgpool",)).features["avgpool"]
        cos = float((got * full).sum() / (np.linalg.norm(got) * np.linalg.norm(full)))
        assert cos > 0.99
    finally:
        half.close()


def test_a_dead_model_thread_fails_requests_at_once_and_turns_health_red(weights_file, monkeypatch, photos):
    app = create_app(Settings(weights=str(weights_file), device="cpu"))
    engine = app.extensions["layertap.engine"]
    assert engine.wait_ready(60)

    def broken(self, batch):
        raise MemoryError("simulated")

    monkeypatch.setattr(Engine, "_run_batch", broken)
    try:
        started = time.monotonic()
        with pytest.raises(InferenceFailed, match="model thread stopped"):
            engine.extract([photos["rocket.jpg"]], ("fc",))
        assert time.monotonic() - started < 5, "no waiting for the deadline"
        client = app.test_client()
        assert client.get("/health").status_code == 503
        assert "MemoryError" in client.get("/health").json["reason"]
        assert client.post("/features", data=photos["rocket.jpg"], content_type="image/jpeg").status_code == 503
    finally:
        engine.close()
