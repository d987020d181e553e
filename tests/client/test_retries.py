"""The Python client's retries, against a scripted HTTP server on loopback.

503 (a worker not ready, a deadline) and 429 (a full queue) are retried, waiting at least what
``Retry-After`` says; other errors are not; when the retries run out the last error is raised.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from layertap_client import LayertapClient, LayertapError

ANSWER = {"features": {"avgpool": {"shape": [1, 2], "data": base64.b64encode(np.float32([1, 2]).tobytes()).decode()}}}


class Scripted:
    """A loopback server answering POSTs with the next (status, headers) of ``script``; the last one repeats."""

    def __init__(self, script: list[tuple[int, dict]]):
        self.script, self.seen = script, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                owner.seen.append(time.monotonic())
                status, headers = owner.script[min(len(owner.seen), len(owner.script)) - 1]
                body = json.dumps(ANSWER if status == 200 else {"error": {"code": "x", "message": "scripted"}})
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        servers.append(Scripted(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_503_and_429_are_retried_until_the_answer(scripted):
    server = scripted([(503, {}), (429, {}), (503, {}), (200, {})])
    features = LayertapClient(server.url, backoff_s=0.001).features([b"x"], layers=["avgpool"])
    np.testing.assert_array_equal(features["avgpool"], [[1, 2]])
    assert len(server.seen) == 4


def test_retry_after_is_waited_for(scripted):
    server = scripted([(503, {"Retry-After": "0.3"}), (200, {})])
    LayertapClient(server.url, backoff_s=0.001).features([b"x"])
    assert server.seen[1] - server.seen[0] >= 0.3


def test_other_errors_are_not_retried_and_the_last_refusal_is_raised(scripted):
    refused = scripted([(400, {})])
    with pytest.raises(LayertapError) as error:
        LayertapClient(refused.url, backoff_s=0.001).features([b"x"])
    assert error.value.status == 400 and len(refused.seen) == 1
    busy = scripted([(503, {})])
    with pytest.raises(LayertapError) as error:
        LayertapClient(busy.url, backoff_s=0.001, max_retries=3).features([b"x"])
    assert error.value.status == 503 and len(busy.seen) == 4
