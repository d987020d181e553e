"""Metrics, request ids, structured logs and the optional API key, through Flask's test client."""

from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.core.settings import Settings
from service.ops.logs import JsonFormatter, RequestIdFilter


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_images_batches_and_errors(client, photos):
    before = scrape(client)
    for _ in range(3):
        assert (
            client.post("/features?layers=fc", data=photos["rocket.jpg"], content_type="image/jpeg").status_code == 200
        )
    assert client.post("/features?layers=nope", data=photos["rocket.jpg"], content_type="image/jpeg").status_code == 400
    assert client.get("/nowhere").status_code == 404
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("layertap_requests_total", endpoint="/features", method="POST", status="200") == 3
    assert delta("layertap_requests_total", endpoint="/features", method="POST", status="400") == 1
    assert delta("layertap_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert delta("layertap_request_duration_seconds_count", endpoint="/features", status="200") == 3
    assert delta("layertap_errors_total", code="unknown_layer") == 1
    assert delta("layertap_errors_total", code="not_found") == 1
    assert delta("layertap_images_total", model="resnet18") == 3
    assert delta("layertap_batch_images_count", model="resnet18") >= 1
    assert delta("layertap_inference_seconds_count", model="resnet18") >= 1
    assert delta("layertap_preprocess_seconds_count", model="resnet18") == 3
    assert value(after, "layertap_queue_images", model="resnet18") == 0
    assert value(after, "layertap_model_load_seconds", model="resnet18") > 0


def test_request_id_is_honoured_generated_and_sanitised(client, photos):
    response = client.get("/health", headers={"X-Request-ID": "trace-42.a"})
    assert response.headers["X-Request-ID"] == "trace-42.a"
    generated = client.get("/health").headers["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()
    hostile = client.get("/health", headers={"X-Request-ID": "x\u2028<script>" + "a" * 300})
    assert hostile.headers["X-Request-ID"] != "x<script>" and len(hostile.headers["X-Request-ID"]) == 32
    error = client.post("/features?layers=nope", data=photos["rocket.jpg"], headers={"X-Request-ID": "req-7"})
    assert error.json["error"]["request_id"] == "req-7"
    assert error.headers["X-Request-ID"] == "req-7"


def test_logs_are_json_lines_with_the_request_id(client, photos):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("layertap")
    logger.addHandler(handler)
    try:
        client.post(
            "/features?layers=fc",
            data=photos["rocket.jpg"],
            content_type="image/jpeg",
            headers={"X-Request-ID": "log-1"},
        )
        client.post(
            "/features?layers=bad",
            data=photos["rocket.jpg"],
            content_type="image/jpeg",
            headers={"X-Request-ID": "log-2"},
        )
    finally:
        logger.removeHandler(handler)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = [e for e in entries if e["logger"] == "layertap.access"]
    assert [(e["request_id"], e["status"]) for e in access] == [("log-1", 200), ("log-2", 400)]
    assert access[0]["method"] == "POST" and access[0]["path"] == "/features" and access[0]["duration_ms"] > 0
    assert {"time", "level", "message"} <= access[0].keys()


def test_successful_probes_and_scrapes_are_not_logged_but_their_errors_are(client, photos):
    """Probes every few seconds and scrapes would drown the requests: only their failures are logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("layertap.access")
    logger.addHandler(handler)
    try:
        for url in ("/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"):
            assert client.get(url).status_code == 200, url
        assert client.get("/v2/models/nosuch/ready").status_code == 404  # an error on a probe route
        assert client.post("/features?layers=fc", data=photos["rocket.jpg"]).status_code == 200
    finally:
        logger.removeHandler(handler)
    assert [(r.path, r.status) for r in records] == [("/v2/models/nosuch/ready", 404), ("/features", 200)]


@pytest.fixture(scope="module")
def keyed_app(weights_file):
    app = create_app(Settings(weights=str(weights_file), device="cpu", api_key="s3cret-key"))
    assert app.extensions["layertap.dataplane"].wait_ready(60)
    yield app
    app.extensions["layertap.dataplane"].close()


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Basic czNjcmV0LWtleQ==", "Bearer", "s3cret-key", "Bearer s3cret-keyX"]
)
def test_api_key_is_required_on_work_endpoints(keyed_app, photos, authorization):
    client = keyed_app.test_client()
    headers = {"Authorization": authorization} if authorization else {}
    for response in (
        client.post("/features", data=photos["rocket.jpg"], content_type="image/jpeg", headers=headers),
        client.get("/shapes", headers=headers),
        client.get("/info", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for response in (client.post("/v2/models/resnet18/infer", data=b"{}", headers=headers), client.get("/v2")):
        assert response.status_code == 401 and "error" in response.json  # the protocol's own error body
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_documented_security_is_what_the_server_enforces(keyed_app):
    """Every route of the OpenAPI document: secured there exactly when the server answers 401 without the key."""
    client = keyed_app.test_client()
    spec = client.get("/openapi.json").json
    for path, item in spec["paths"].items():
        url = path.replace("{model}", "resnet18").replace("{version}", "1")
        for method, operation in item.items():
            status = client.open(url, method=method.upper(), data=b"{}").status_code
            assert (status == 401) == ("security" in operation), (method, path, status)


def test_api_key_lets_the_right_bearer_in_and_leaves_probes_open(keyed_app, photos):
    client = keyed_app.test_client()
    good = {"Authorization": "Bearer s3cret-key"}
    assert (
        client.post("/features", data=photos["rocket.jpg"], content_type="image/jpeg", headers=good).status_code == 200
    )
    assert client.get("/shapes", headers=good).status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/v2/health/live").status_code == 200 and client.get("/v2/health/ready").status_code == 200


def test_auth_all_endpoints_closes_the_probes_too(weights_file):
    app = create_app(Settings(weights=str(weights_file), device="cpu", api_key="k", auth_all_endpoints=True))
    try:
        client = app.test_client()
        assert client.get("/health").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.get("/v2/health/ready").status_code == 401
        assert client.get("/health", headers={"Authorization": "Bearer k"}).status_code == 200
    finally:
        app.extensions["layertap.dataplane"].close()


def test_the_key_never_shows_in_settings_output():
    settings = Settings(weights="random", api_key="do-not-print")
    assert "do-not-print" not in repr(settings) and "do-not-print" not in str(settings.model_dump())
