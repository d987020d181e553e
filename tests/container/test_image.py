"""The image, checked from outside: build the Dockerfile, run it, and hold it to what the README promises.

Why: the rest of the suite tests the service as ``make run`` starts it; nothing else builds the
Dockerfile, so an image that does not start, runs as root, loses its HEALTHCHECK, ships other
weights, or dies on ``docker stop`` would pass CI. Here one build and one container serve every
check (``make container-test``; CI runs it):

- ``/health`` and ``/ready`` answer 200 through a port published on loopback only;
- ``/features`` for the sample photos equals (cosine ≥ 0.9999 on every layer asked) what the
  service started on this machine as ``make run`` starts it answers, with the same weights file,
  which the image bakes in through ``--build-arg WEIGHTS=weights/<file>``;
- the service is the installed package (no source tree), with the client's ``layertap`` command;
- gunicorn is PID 1 and runs as uid and gid 10001, not root;
- the image keeps its HEALTHCHECK (podman needs ``--format docker``), and it reports healthy;
- last, a stop (SIGTERM, then SIGKILL after the grace period) while requests are in flight: all
  of them answer 200, and the container exits 0 well within the grace period.

The containers, the image, its build layers, a base image made here (see harness.py) and the
weights file are removed afterwards; a leftover is reported as an error. The engine is docker
when its daemon answers, else podman; without either the module skips, with podman installed
but broken it fails.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from stress.server import free_port, start_server
from tests.conftest import PHOTOS, make_state_dict
from tests.container import harness
from tests.container.harness import LABEL, NAME_PREFIX, ROOT, Engine, EngineError

# The first test carries the build (4 to 8 minutes here): far past the suite's 300 s default.
pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

LAYERS = ("layer1", "layer4", "avgpool", "fc")
MIN_COSINE = 0.9999
USER_ID = "10001"
# gunicorn's graceful_timeout (service/gunicorn_conf.py), and the time the engine gives a stop before SIGKILL.
GRACE_S = 30
MIME = {".jpg": "image/jpeg", ".png": "image/png"}


@dataclass
class Container:
    engine: Engine
    name: str
    image: str
    url: str
    port: int
    weights: Path
    report: dict = field(default_factory=dict)

    def exec(self, *command: str) -> str:
        return self.engine("exec", self.name, *command).stdout

    def logs(self) -> str:
        done = self.engine("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.engine.inspect(self.name)["State"]["Running"]:
                raise AssertionError(f"the container stopped:\n{self.logs()[-5000:]}")
            try:
                if requests.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready within {timeout} s:\n{self.logs()[-5000:]}")


@pytest.fixture(scope="module")
def engine() -> Engine:
    try:
        found = harness.find_engine()
    except EngineError as exc:
        pytest.fail(str(exc))
    if found is None:
        pytest.skip(
            "needs a container engine: docker with a daemon that answers, or podman "
            "(deploy/container/install-engine.sh installs podman)"
        )
    return found


@pytest.fixture(scope="module")
def run_id() -> str:
    return harness.new_run_id()


@pytest.fixture(scope="module")
def weights(run_id) -> Path:
    """Seeded random weights in weights/ (the build context; *.pt is ignored by git), removed afterwards."""
    path = ROOT / "weights" / f"{NAME_PREFIX}-{run_id}.pt"
    torch.save(make_state_dict(), path)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def container(engine, weights, run_id, tmp_path_factory) -> Container:
    """One build, one container for the module; everything made is removed afterwards."""
    workdir = tmp_path_factory.mktemp("container")
    image = f"localhost/{NAME_PREFIX}:{run_id}"
    name = f"{NAME_PREFIX}-{run_id}"
    images_before = engine.image_ids()
    plan = None
    report: dict = {"engine": " ".join(engine.argv)}
    try:
        started = time.monotonic()
        plan = harness.plan_build(engine, workdir, run_id)
        try:
            storage = harness.check_room(engine, harness.needed_free_gib(plan))
        except harness.NoRoom as exc:
            report.update(notes=plan.notes, skipped=str(exc))
            pytest.skip(str(exc))
        built = harness.build(
            engine, plan, image, {"WEIGHTS": weights.relative_to(ROOT).as_posix()}, workdir / "build.log", storage
        )
        port = free_port()
        engine(
            "run",
            "--detach",
            "--name",
            name,
            "--label",
            f"{LABEL}=container",
            *engine.limits,
            "--publish",
            f"127.0.0.1:{port}:8080",
            image,
        )
        running = Container(engine, name, image, f"http://127.0.0.1:{port}", port, weights, report)
        run_started = time.monotonic()
        running.wait_ready()
        report.update(
            notes=plan.notes,
            build_s=round(built.seconds),
            build_peak_disk_gib=None if built.peak_disk_bytes is None else round(built.peak_disk_bytes / 2**30, 1),
            ready_s=round(time.monotonic() - run_started, 1),
            setup_s=round(time.monotonic() - started),
            image_bytes=int(engine.inspect(image)["Size"]),
        )
        yield running
    finally:
        leftovers = report["leftovers"] = _clean_up(engine, name, image, images_before, plan)
        (workdir / "report.json").write_text(json.dumps(report, indent=2))
        harness.REPORTS.append(report)  # printed at the end of the run (conftest.py)
        if leftovers:
            pytest.fail(f"could not remove what the container test made: {leftovers}")


def _clean_up(engine: Engine, name: str, image: str, images_before: set[str], plan) -> list[str]:
    """Remove the container, the image, its build layers and a base made here; return what could not be removed."""
    engine("rm", "--force", name, timeout=120, check=False)
    # Ours: labelled, and new since this run began (two runs at once on one engine are not supported).
    # Forced: a build cut short leaves podman working containers on its layers.
    made = (engine.labelled_images() - images_before) | {image}
    if plan is not None and plan.made_base:
        made.add(plan.made_base)
    left = engine.remove_images(sorted(made), force=True)
    if engine("container", "inspect", name, check=False).returncode == 0:
        left.append(name)
    return left


@pytest.fixture(scope="module")
def photos_by_name(photos) -> list[tuple[str, bytes]]:
    return [(name, photos[name]) for name in PHOTOS]


def request_features(url: str, photos: list[tuple[str, bytes]]) -> tuple[dict, dict[str, np.ndarray]]:
    files = [("image", (name, data, MIME[Path(name).suffix])) for name, data in photos]
    response = requests.post(
        f"{url}/features", params={"layers": ",".join(LAYERS), "encoding": "base64"}, files=files, timeout=120
    )
    assert response.status_code == 200, response.text[:1000]
    body = response.json()
    arrays = {
        layer: np.frombuffer(base64.b64decode(value["data"]), "<f4").reshape(value["shape"])
        for layer, value in body["features"].items()
    }
    return body, arrays


@pytest.fixture(scope="module")
def host_features(weights, photos_by_name, tmp_path_factory) -> tuple[dict, dict[str, np.ndarray]]:
    """The same request to the service started here as `make run` starts it (gunicorn, its config), same weights."""
    server = start_server(tmp_path_factory.mktemp("host-server"), {"LAYERTAP_WEIGHTS": str(weights)})
    try:
        server.wait_ready()
        return request_features(server.url, photos_by_name)
    finally:
        server.stop()


def test_health_and_ready_answer_200(container):
    for path in ("/health", "/ready"):
        response = requests.get(f"{container.url}{path}", timeout=5)
        assert response.status_code == 200, (path, response.status_code, response.text)


def test_features_equal_the_service_run_on_this_machine(container, host_features, photos_by_name):
    host_body, host = host_features
    body, image = request_features(container.url, photos_by_name)
    assert body["model"] == host_body["model"]
    # The same file baked in: same name, same digest.
    assert body["weights"] == host_body["weights"]
    assert body["weights"].startswith(f"file:{container.weights.name}@sha256:")
    assert list(image) == list(LAYERS)
    for layer in LAYERS:
        assert image[layer].shape == host[layer].shape, layer
        a = image[layer].reshape(len(photos_by_name), -1).astype(np.float64)
        b = host[layer].reshape(len(photos_by_name), -1).astype(np.float64)
        cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosines.min() >= MIN_COSINE, (layer, dict(zip(PHOTOS, cosines.round(6).tolist(), strict=True)))


def test_the_installed_package_serves_and_the_client_is_there(container):
    where = container.exec(
        "python", "-c", "import service, layertap_client; print(service.__file__, layertap_client.__file__)"
    )
    assert all(path.startswith("/opt/venv/lib/") for path in where.split()), where
    assert "embed" in container.exec("layertap", "--help")
    # Only the weights file beside it, no source tree.
    assert container.exec("find", "/app", "-type", "f").split() == [f"/app/weights/{container.weights.name}"]


def test_gunicorn_is_pid_1_and_not_root(container):
    assert container.engine.inspect(container.image)["Config"]["User"] == USER_ID
    status = container.exec("cat", "/proc/1/status")
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    assert uids == [USER_ID] * 4, status
    assert gids == [USER_ID] * 4, status  # the group deploy/k8s runs it as (runAsGroup)
    assert "gunicorn" in container.exec("cat", "/proc/1/cmdline").replace("\0", " ")


def test_healthcheck_reports_healthy(container):
    image = container.engine.inspect(container.image)
    check = image.get("Healthcheck") or image["Config"].get("Healthcheck")  # podman's place, docker's
    assert check and "/health" in " ".join(check["Test"]), f"the image lost its HEALTHCHECK: {check}"
    engine = container.engine
    if engine.name == "podman":
        done = engine("healthcheck", "run", container.name, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
    deadline = time.monotonic() + 90  # docker runs the first check one interval (15 s) after start
    while True:
        state = engine.inspect(container.name)["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        if health.get("Status") == "healthy" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert health.get("Status") == "healthy", health


def test_stop_finishes_requests_in_flight_and_exits_0(container, photos):
    """Last: it stops the container. Uploads paused half way are in flight for certain when SIGTERM lands."""
    photo = photos["rocket.jpg"]
    uploads = []
    for _ in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", container.port, timeout=60)
        connection.putrequest("POST", "/features?layers=avgpool")
        connection.putheader("Content-Type", "image/jpeg")
        connection.putheader("Content-Length", str(len(photo)))
        connection.endheaders()
        connection.send(photo[: len(photo) // 2])
        uploads.append(connection)
    # Whole requests too, started just before the signal, so the model is busy when it lands.
    files = [("image", (f"{i}.jpg", photo, "image/jpeg")) for i in range(4)]
    results: list[int | str] = []
    go = threading.Barrier(5)

    def busy() -> None:
        go.wait(10)
        try:
            results.append(
                requests.post(f"{container.url}/features", params={"layers": "fc"}, files=files, timeout=60).status_code
            )
        except requests.RequestException as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=busy) for _ in range(4)]
    for thread in threads:
        thread.start()
    go.wait(10)
    time.sleep(0.3)  # connected and accepted; their batches take a while on a few cores
    started = time.monotonic()
    stop = subprocess.Popen(
        [*container.engine.argv, "stop", "--time", str(GRACE_S), container.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # gunicorn's master logs this as SIGTERM lands, then passes it on to the worker: from here on, the
    # uploads' second halves arrive at a service that is shutting down.
    deadline = time.monotonic() + 10
    while "Handling signal: term" not in container.logs():
        assert time.monotonic() < deadline, f"no sign of SIGTERM in the log:\n{container.logs()[-3000:]}"
        time.sleep(0.1)
    time.sleep(0.5)
    for connection in uploads:
        connection.send(photo[len(photo) // 2 :])
    for connection in uploads:
        try:
            response = connection.getresponse()
            response.read()
            results.append(response.status)
        except (OSError, http.client.HTTPException) as exc:
            results.append(repr(exc))
        connection.close()
    for thread in threads:
        thread.join(60)
    output, _ = stop.communicate(timeout=GRACE_S + 30)
    elapsed = time.monotonic() - started
    state = container.engine.inspect(container.name)["State"]
    assert results == [200] * 7, results
    assert state["ExitCode"] == 0, (state, output, container.logs()[-3000:])
    assert elapsed < GRACE_S, f"the stop took {elapsed:.1f} s (SIGKILL comes at {GRACE_S} s)"
    assert "Shutting down: Master" in container.logs()
    container.report["stop_s"] = round(elapsed, 1)


def test_a_short_disk_stops_the_build_before_it_starts_with_both_figures(engine):
    storage = engine.storage_root()
    if storage is None:  # a remote docker daemon: its disk is not ours to read, and nothing is checked
        assert harness.check_room(engine, 1e9) is None
        return
    needed = shutil.disk_usage(storage).free / 2**30 + 1024
    pattern = rf"^needs free disk: .* about {needed:g} GiB at {re.escape(str(storage))}, and \d+\.\d GiB is free"
    with pytest.raises(harness.NoRoom, match=pattern):
        harness.check_room(engine, needed)
    assert harness.check_room(engine, 0) == harness.check_room(engine, None) == storage


def test_the_room_needed_is_known_for_the_cuda_build_only_and_can_be_set(monkeypatch):
    monkeypatch.delenv("LAYERTAP_CONTAINER_MIN_FREE_GIB", raising=False)
    assert harness.needed_free_gib(harness.BuildPlan()) is None  # the CPU index answered: a small image
    local = harness.BuildPlan(build_args={"TORCH_INDEX_URL": "file:///opt/pypi-more/simple"})
    assert harness.needed_free_gib(local) == harness.NEEDED_FREE_GIB_CUDA_TORCH
    monkeypatch.setenv("LAYERTAP_CONTAINER_MIN_FREE_GIB", "7.5")
    assert harness.needed_free_gib(harness.BuildPlan()) == 7.5
