"""A model runner through its public face and its seams: placement, passes, the device, the CPU's flags, extract."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from service.core.errors import StartupError
from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.modeling import build
from service.modeling.entries import load_entry
from service.modeling.weights import resolve_weights
from service.ops import cores
from service.runners.runner import ModelRunner
from service.runners.seams import ForwardChunk, RunnerSeams
from tests.ops.test_cores import OtherWorker


def test_the_default_seams_are_the_services_behaviour():
    seams = RunnerSeams()
    assert seams.device is None and seams.place is build.place
    assert seams.before_pass is None and seams.cpu_flags is None


@pytest.fixture(scope="module")
def entry():
    return load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")


@pytest.fixture(scope="module")
def seen():
    """What the seams of the runner below saw: its placements and its passes."""
    return {"placed": [], "passes": [], "threads": set()}


@pytest.fixture(scope="module")
def runner(entry, weights_file, seen):
    def placing(model, device, dtype, channels_last):
        seen["placed"].append((type(model).__name__, device, dtype, channels_last))
        return build.place(model, device, dtype, channels_last)

    def before_pass(chunk: ForwardChunk) -> None:
        seen["passes"].append(chunk)
        seen["threads"].add(threading.current_thread().name)

    # LAYERTAP_DEVICE says cuda; the device seam wins, so this runs (and is sized) on any machine.
    settings = Settings(weights=str(weights_file), device="cuda", dtype="auto", preprocessing="exact", workers=1)
    seams = RunnerSeams(device=torch.device("cpu"), place=placing, before_pass=before_pass, cpu_flags=("avx2",))
    runner = ModelRunner(settings, entry, resolve_weights(settings.weights, entry), seams)
    runner.start()
    assert runner.wait_ready(60), runner.failure
    yield runner
    runner.close()


def test_the_model_thread_places_the_model_and_its_folded_twin_through_the_seam(runner, seen):
    assert seen["placed"] == [("ResNet", torch.device("cpu"), "float32", True)] * 2  # folded twin, then the model
    assert seen["threads"] == {"layertap-resnet18"}, "passes run on the model's thread"


def test_the_device_and_cpu_flags_seams_decide_the_device_and_the_auto_dtype(runner):
    info = runner.describe()
    assert (info["device"], info["dtype_setting"], info["dtype"], info["cpu_flags"]) == (
        "cpu",
        "auto",
        "float32",
        ["avx2"],
    )
    assert runner.device == torch.device("cpu") and runner.cpu_flags == ("avx2",)


def test_extract_runs_the_prepared_images_and_before_pass_sees_each_chunk(runner, seen, photos):
    seen["passes"].clear()
    images = tuple(runner.inputs.prepare(photos[name]) for name in ("rocket.jpg", "chelsea.png"))
    runner.check_layers(("layer2", "fc"))
    with runner.reserve(len(images)) as ticket:
        done = runner.extract(ticket, images, ("layer2", "fc"))
    assert done.result["fc"].shape == (2, 1000) and done.result["layer2"].shape == (2, 128, 28, 28)
    assert done.result["fc"].dtype == np.float32 and done.batch_items == 2
    [chunk] = seen["passes"]
    assert (chunk.model, chunk.layers, tuple(chunk.inputs.shape)) == ("resnet18", {"layer2", "fc"}, (2, 3, 224, 224))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in chunk.module.modules()), "the folded twin ran"


def test_a_pass_stops_at_the_deepest_layer_the_batch_needs(runner, seen, photos):
    """Early exit: asking for layer1 runs the stem and layer1, nothing after; layer3 stops before layer4."""
    image = (runner.inputs.prepare(photos["rocket.jpg"]),)

    def run(layers: tuple[str, ...]) -> list[str]:
        seen["passes"].clear()
        ran: list[str] = []
        with runner.reserve(1) as ticket:
            runner.extract(ticket, image, layers)  # the first pass shows which module (model or twin) runs these
        [chunk] = seen["passes"]
        handles = [
            child.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
            for name, child in chunk.module.named_children()
        ]
        try:
            with runner.reserve(1) as ticket:
                runner.extract(ticket, image, layers)
        finally:
            for handle in handles:
                handle.remove()
        return ran

    assert run(("layer1",)) == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    assert run(("layer1.0.add",)) == ["conv1", "bn1", "relu", "maxpool", "layer1"]  # an op layer stops it too
    assert run(("layer3", "bn1")) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    assert run(("fc",))[-3:] == ["layer4", "avgpool", "fc"]


def test_mixed_batches_of_module_and_op_layers_give_each_request_what_it_gets_alone(runner, seen, photos):
    asks = [("layer2.1.add",), ("layer3",), ("layer1.0.add", "fc"), ("flatten",), ("layer2.1.add", "layer3")]
    images = [runner.inputs.prepare(photos[name]) for name in ("rocket.jpg", "chelsea.png", "coffee.png")]

    def extract(index: int) -> dict[str, np.ndarray]:
        image = (images[index % len(images)],)
        runner.check_layers(asks[index])
        with runner.reserve(1) as ticket:
            return runner.extract(ticket, image, asks[index]).result

    seen["passes"].clear()
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(extract, range(len(asks))))
    mixed = [chunk for chunk in seen["passes"] if len(chunk.inputs) > 1 and {"layer3", "layer2.1.add"} & chunk.layers]
    assert mixed, "no pass held requests of both kinds: the test would prove nothing"
    for index, result in enumerate(together):
        assert set(result) == set(asks[index])
        alone = extract(index)
        for name in asks[index]:
            np.testing.assert_allclose(result[name], alone[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_the_catalogue_answers_through_the_runner(runner):
    catalogue = runner.catalogue
    assert runner.layers is catalogue.layers and len(runner.layers) == runner.describe()["layers"]
    assert (runner.default_layer, runner.classifier, runner.classes) == ("avgpool", "fc", 1000)
    assert runner.spatial_layers == catalogue.spatial_layers and runner.layout_of("layer4") == "nchw"
    assert [c.name for c in runner.shapes(1, 224, 224)] == [c.name for c in runner.layers]


def test_a_placement_that_fails_fails_the_load_with_its_reason(entry, weights_file):
    def broken(*args):
        raise RuntimeError("CUDA out of memory (simulated)")

    settings = Settings(weights=str(weights_file), device="cpu")
    runner = ModelRunner(settings, entry, resolve_weights(settings.weights, entry), RunnerSeams(place=broken))
    runner.start()
    try:
        assert not runner.wait_ready(30)
        assert runner.state == "failed" and "simulated" in runner.failure
    finally:
        runner.close()


def test_an_explicit_cuda_device_that_does_not_exist_is_a_start_up_error(entry, weights_file):
    if torch.cuda.is_available():
        pytest.skip("needs no CUDA: the point is a machine without it")
    settings = Settings(weights=str(weights_file), device="cuda")
    with pytest.raises(StartupError, match="CUDA is not available here"):
        ModelRunner(settings, entry, resolve_weights(settings.weights, entry))


def test_a_worker_alone_with_work_runs_its_passes_on_every_core(entry, weights_file, photos):
    """On the CPU with automatic threads, a pass takes every core unless another worker has work in hand
    (service/ops/cores.py); the threads each batch ran on are counted in layertap_passes_total."""
    threads: list[int] = []
    settings = Settings(weights=str(weights_file), device="cpu", dtype="float32", workers=2)
    # 4 cores for two workers: a share of 2, and all 4 when alone
    seams = RunnerSeams(before_pass=lambda chunk: threads.append(torch.get_num_threads()), cores=4)
    runner = ModelRunner(settings, entry, resolve_weights(settings.weights, entry), seams)
    page = cores.WorkerPage(slots=2, linger_s=0.0)
    cores.join(page, page.assign())
    runner.start()
    try:
        assert runner.wait_ready(60), runner.failure
        image = (runner.inputs.prepare(photos["rocket.jpg"]),)

        def one_pass(others_busy: int = 0) -> int:
            threads.clear()
            with runner.reserve(1) as ticket:
                assert cores.busy_workers() == 1 + others_busy, "room reserved: this worker has work in hand"
                runner.extract(ticket, image, ("avgpool",))
            assert cores.busy_workers() == others_busy, "its work ended with the pass"
            return threads[-1]

        passes_on = {n: REGISTRY.get_sample_value("layertap_passes_total", {"model": "resnet18", "threads": n}) or 0
                     for n in ("2", "4")}  # fmt: skip
        assert one_pass() == 4
        other = OtherWorker(page, page.assign())
        try:
            assert one_pass(others_busy=1) == 2
        finally:
            other.finish()
        assert one_pass() == 4
        for n, count in {"4": 2, "2": 1}.items():
            total = REGISTRY.get_sample_value("layertap_passes_total", {"model": "resnet18", "threads": n})
            assert total - passes_on[n] == count
    finally:
        runner.close()
        cores.leave()
