"""What a request waits for, through the REST front-end: never past its deadline, never for a batch alone.

- A request still queued at ``LAYERTAP_REQUEST_TIMEOUT_S`` gets 503 ``deadline_exceeded`` and its
  images are never computed: the model thread skips it (the seam sees every pass it runs).
- A lone client does not wait ``LAYERTAP_MAX_BATCH_DELAY_MS`` for company: with the delay set far
  longer than a pass, its answer comes back long before the delay would have ended.
"""

from __future__ import annotations

import threading
import time

from service.app import create_app
from service.core.settings import Settings
from service.runners.seams import ForwardChunk, RunnerSeams
from tests.frontends.rest.test_routes import assert_error, post_image


class Recorder:
    """A ``before_pass`` seam, armed after the warm-up: records each pass's images, holds the first until
    ``gate`` opens."""

    def __init__(self):
        self.armed, self.entered, self.gate = threading.Event(), threading.Event(), threading.Event()
        self.passes: list[int] = []

    def __call__(self, chunk: ForwardChunk) -> None:
        if not self.armed.is_set():
            return
        self.passes.append(chunk.inputs.shape[0])
        if len(self.passes) == 1:
            self.entered.set()
            assert self.gate.wait(30)


def test_a_request_past_its_deadline_gets_503_and_is_never_computed(weights_file, photos):
    recorder = Recorder()
    settings = Settings(weights=str(weights_file), device="cpu", request_timeout_s=1.0, max_batch_delay_ms=0)
    app = create_app(settings, seams=RunnerSeams(before_pass=recorder))
    plane = app.extensions["layertap.dataplane"]
    try:
        assert plane.wait_ready(60), plane.failure
        recorder.armed.set()
        client = app.test_client()
        first: list = []
        holder = threading.Thread(target=lambda: first.append(post_image(client, photos["rocket.jpg"], "fc")))
        holder.start()
        assert recorder.entered.wait(30)  # the first request's pass is running, and held
        queued = post_image(app.test_client(), photos["grace_hopper.jpg"], "fc")
        assert_error(queued, 503, "deadline_exceeded")
        recorder.gate.set()
        holder.join(30)
        assert_error(first[0], 503, "deadline_exceeded")  # its pass ran past its deadline too: discarded
        after = post_image(app.test_client(), photos["chelsea.png"], "fc")
        assert after.status_code == 200
        # The held pass, then the request after: the queued one was dropped, not computed.
        assert recorder.passes == [1, 1]
    finally:
        recorder.gate.set()
        plane.close()


def test_a_lone_client_does_not_wait_for_the_batch_delay(weights_file, photos):
    delay_s = 20.0
    settings = Settings(weights=str(weights_file), device="cpu", max_batch_delay_ms=delay_s * 1000)
    app = create_app(settings)
    plane = app.extensions["layertap.dataplane"]
    try:
        assert plane.wait_ready(60), plane.failure
        client = app.test_client()
        for photo in ("rocket.jpg", "grace_hopper.jpg", "chelsea.png"):
            started = time.monotonic()
            assert post_image(client, photos[photo], "avgpool").status_code == 200
            # A pass takes tens of milliseconds; waiting for company would take the whole delay.
            assert time.monotonic() - started < delay_s / 4
    finally:
        plane.close()
