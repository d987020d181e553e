"""Production behaviour of the real server: graceful shutdown, multi-worker metrics, `make run` with logs and auth."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.frontends.http.worker import GRACEFUL_TIMEOUT_S
from stress.server import start_server

pytestmark = pytest.mark.integration


def admitted_images(session: requests.Session, url: str) -> int:
    """Images queued (/info) plus images through the model (/metrics): all admitted ones but the batch running."""
    queued = session.get(f"{url}/info", timeout=5).json()["queue_images"]
    metrics = text_string_to_metric_families(session.get(f"{url}/metrics", timeout=5).text)
    done = sum(s.value for family in metrics if family.name == "layertap_images" for s in family.samples
               if s.name == "layertap_images_total")  # fmt: skip
    return queued + int(done)


def test_sigterm_turns_readiness_off_and_loses_no_request(tmp_path, weights_file, photos):
    """Its own server: the test stops it."""
    server = start_server(
        tmp_path,
        {"LAYERTAP_WEIGHTS": str(weights_file), "LAYERTAP_MAX_BATCH_SIZE": "4", "LAYERTAP_MAX_QUEUE_IMAGES": "64"},
    )
    server.wait_ready()
    keep_alive = requests.Session()
    assert keep_alive.get(f"{server.url}/ready", timeout=5).status_code == 200
    # Slow requests: 8 images each, so several are still running when SIGTERM arrives.
    files = [("image", (f"{i}.jpg", photos["rocket.jpg"], "image/jpeg")) for i in range(8)]
    results: list[int | str] = []
    started = threading.Barrier(7)

    def slow_request():
        started.wait(10)
        try:
            response = requests.post(f"{server.url}/features", params={"layers": "fc"}, files=files, timeout=60)
            results.append(response.status_code)
        except requests.RequestException as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=slow_request) for _ in range(6)]
    for thread in threads:
        thread.start()
    started.wait(10)
    # All six are admitted: 48 images, less one batch of at most 4 on the model, are queued or done (5 would be 40).
    deadline = time.monotonic() + 30
    while admitted_images(keep_alive, server.url) <= 40:
        assert time.monotonic() < deadline, "the six requests were never all admitted"
    server.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # Draining starts when the worker handles the signal: poll, as a load balancer does.
    while (readiness := keep_alive.get(f"{server.url}/ready", timeout=5)).status_code == 200:
        assert time.monotonic() - signalled < 5, "readiness never turned off"
    # A client still connected sees the pod as no longer ready (kept-alive connections linger 2 s).
    assert readiness.status_code == 503 and readiness.json()["status"] == "draining"
    for thread in threads:
        thread.join(60)
    assert results == [200] * 6, results
    assert server.process.wait(40) == 0
    assert time.monotonic() - signalled < GRACEFUL_TIMEOUT_S, "stopped within gunicorn's graceful timeout"
    log = server.log()
    assert "draining" in log and "Shutting down: Master" in log
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=2)


def counts(server) -> dict[str, float]:
    """/features requests answered 200, and images through the model, as /metrics reports them."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    found = {"requests": 0.0, "images": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "layertap_requests_total" and sample.labels == {
                "endpoint": "/features",
                "method": "POST",
                "status": "200",
            }:
                found["requests"] = sample.value
            elif sample.name == "layertap_images_total":
                found["images"] = sample.value
    return found


def test_metrics_add_up_across_workers(two_workers, photos):
    assert len(two_workers.workers()) == 2
    before = counts(two_workers)
    for _ in range(12):
        response = requests.post(
            f"{two_workers.url}/features", data=photos["chelsea.png"], headers={"Content-Type": "image/png"}, timeout=30
        )
        assert response.status_code == 200
    for _ in range(6):  # whichever worker answers the scrape, the totals are the same
        after = counts(two_workers)
        assert after["requests"] - before["requests"] == 12
        assert after["images"] - before["images"] == 12


def test_make_run_logs_json_with_request_ids_applies_the_key_and_stops_on_ctrl_c(tmp_path, weights_file, photos):
    """Its own server, started the way the README starts it; the test stops it with Ctrl-C."""
    server = start_server(
        tmp_path,
        {"LAYERTAP_WEIGHTS": str(weights_file), "LAYERTAP_API_KEY": "k-123"},
        command=["make", "--silent", "--no-print-directory", "run"],
    )
    try:
        server.wait_ready()
        url = f"{server.url}/features"
        denied = requests.post(url, data=photos["rocket.jpg"], headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        headers = {"Content-Type": "image/jpeg", "Authorization": "Bearer k-123", "X-Request-ID": "it-req-1"}
        allowed = requests.post(url, data=photos["rocket.jpg"], headers=headers, timeout=30)
        assert allowed.status_code == 200 and allowed.headers["X-Request-ID"] == "it-req-1"
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        stopping = time.monotonic()
        server.stop(signal.SIGINT)  # what a terminal sends to the foreground process group
        stopped_s = time.monotonic() - stopping
    # Idle, it stops at once: a hang that gunicorn ends with SIGKILL after its grace period would take all of it.
    assert stopped_s < GRACEFUL_TIMEOUT_S / 3, stopped_s
    assert "SIGKILL" not in server.log() and "WORKER TIMEOUT" not in server.log()
    entries = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # gunicorn's lines too
    access = [e for e in entries if e["logger"] == "layertap.access"]
    assert any(e.get("request_id") == "it-req-1" and e["status"] == 200 for e in access)
    assert any(e["status"] == 401 for e in access)
    assert any(e["logger"] == "gunicorn.error" and e["message"] == "Shutting down: Master" for e in entries)


def passes_by_threads(server) -> dict[str, float]:
    """layertap_passes_total, summed over the workers, by the torch threads the batches ran on."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {
        sample.labels["threads"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "layertap_passes_total"
    }


def test_a_lone_client_of_two_workers_gets_every_core(two_workers, photos):
    """Each worker's share is half the cores, but a worker alone with work borrows the other's (service/ops/cores.py):
    a lone keep-alive client's passes run on every core, as with one worker."""
    every = str(len(os.sched_getaffinity(0)))
    before = passes_by_threads(two_workers)
    with requests.Session() as session:  # one connection: one worker serves it, the other stays idle
        for _ in range(5):
            response = session.post(f"{two_workers.url}/features?layers=avgpool", data=photos["rocket.jpg"], timeout=30)
            assert response.status_code == 200
    after = passes_by_threads(two_workers)
    assert after.get(every, 0) - before.get(every, 0) == 5, (before, after)
