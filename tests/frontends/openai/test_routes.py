"""OpenAI's embeddings API in process, through the official ``openai`` client on a WSGI transport: the statuses
a live server rarely shows on demand (401, 429 with Retry-After, 503) each raise the client's own class."""

from __future__ import annotations

import base64
import threading

import httpx
import openai
import pytest

from service.app import create_app
from service.core.settings import Settings
from service.runners.seams import RunnerSeams
from tests.frontends.rest.test_waiting import Recorder


def client_of(app, api_key: str = "unused") -> openai.OpenAI:
    http = httpx.Client(transport=httpx.WSGITransport(app=app))
    return openai.OpenAI(base_url="http://layertap/v1", api_key=api_key, http_client=http, max_retries=0)


def data_url(photo: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(photo).decode()


def test_a_missing_or_wrong_key_is_an_authentication_error(weights_file, photos):
    app = create_app(Settings(weights=str(weights_file), device="cpu", api_key="s3cret"))
    plane = app.extensions["layertap.dataplane"]
    try:
        assert plane.wait_ready(60), plane.failure
        with pytest.raises(openai.AuthenticationError) as caught:
            client_of(app, "wrong").embeddings.create(model="resnet18", input=data_url(photos["rocket.jpg"]))
        assert caught.value.body["type"] == "authentication_error"
        answer = client_of(app, "s3cret").embeddings.create(model="resnet18", input=data_url(photos["rocket.jpg"]))
        assert len(answer.data[0].embedding) == 512  # the client sends the key as Authorization: Bearer
    finally:
        plane.close()


def test_overload_is_a_rate_limit_error_with_retry_after_and_loading_is_503(weights_file, photos):
    recorder = Recorder()
    settings = Settings(
        weights=str(weights_file),
        device="cpu",
        max_queue_images=16,
        max_images_per_request=8,
        max_batch_size=16,
        max_queue_wait_ms=0,
    )
    app = create_app(settings, seams=RunnerSeams(before_pass=recorder))
    plane = app.extensions["layertap.dataplane"]
    try:
        with pytest.raises(openai.InternalServerError) as caught:  # 503: still loading
            client_of(app).embeddings.create(model="resnet18", input=data_url(photos["rocket.jpg"]))
        assert caught.value.status_code == 503 and caught.value.body["code"] == "not_ready"
        assert plane.wait_ready(60), plane.failure
        recorder.armed.set()
        held = threading.Thread(
            target=lambda: client_of(app).embeddings.create(model="resnet18", input=[data_url(photos["rocket.jpg"])])
        )
        held.start()
        assert recorder.entered.wait(30)  # one pass holds the model thread
        ticket = plane.admit("resnet18", images=16)  # and the queue is full
        try:
            with pytest.raises(openai.RateLimitError) as caught:
                client_of(app).embeddings.create(model="resnet18", input=data_url(photos["rocket.jpg"]))
        finally:
            ticket.release()
        assert caught.value.response.headers["Retry-After"] == "1"
        assert caught.value.body["type"] == "rate_limit_error" and caught.value.body["code"] == "overloaded"
    finally:
        recorder.gate.set()
        plane.close()
