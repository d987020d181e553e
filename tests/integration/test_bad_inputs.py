"""The bad-input corpus against the real server: every kind gets a 4xx JSON error fast, and nothing breaks."""

from __future__ import annotations

import time

import pytest
import requests

from stress.corpus import corpus, send
from stress.server import rss_mb

pytestmark = pytest.mark.integration


def test_every_bad_input_gets_a_quick_json_4xx_and_the_service_stays_healthy(server, photos):
    items = corpus(photos["rocket.jpg"], photos["chelsea.png"], max_body_bytes=1_000_000, max_images=8)
    assert len(items) >= 30
    session = requests.Session()
    worker = server.workers()[0]
    assert send(session, server.url, corpus(photos["rocket.jpg"], b"", 1, 1)[0]).status_code == 400  # warm the path
    rss_before = rss_mb(worker)
    failures = []
    for item in items:
        started = time.perf_counter()
        try:
            response = send(session, server.url, item)
        except requests.RequestException as exc:
            failures.append(f"{item.kind}: {exc!r}")
            session = requests.Session()
            continue
        elapsed = time.perf_counter() - started
        problems = []
        if response.status_code not in item.expected:
            problems.append(f"status {response.status_code}, expected {item.expected}")
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            problems.append(f"content type {response.headers.get('Content-Type')}")
        else:
            error = response.json().get("error")  # {"code", "message", ...}, or the protocol's plain message under /v2
            if not (error.get("message") if isinstance(error, dict) else error):
                problems.append("no error message")
        if elapsed > 2:
            problems.append(f"took {elapsed:.2f} s")
        if problems:
            failures.append(f"{item.kind}: {'; '.join(problems)}: {response.text[:200]}")
    assert not failures, "\n".join(failures)
    assert server.workers() == [worker], "the worker must not have died"
    assert rss_mb(worker) - rss_before < 150, "memory must stay bounded"
    ok = requests.post(
        f"{server.url}/features", data=photos["rocket.jpg"], headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert ok.status_code == 200 and ok.json()["features"]["avgpool"]["shape"] == [1, 512, 1, 1]
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
