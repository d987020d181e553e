"""The gunicorn worker's deadlines on clients: request heads gathered without blocking, body reads bounded.

A socket pair stands in for a client; the connection is the worker's own, with gunicorn's real
parser behind it. The whole worker under attack is tests/integration/test_stress.py's business.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from gunicorn.config import Config

from service.frontends.http.worker import BodyTimeout, Deadlines, GuardedConn, Lingerer


@pytest.fixture
def client_and_conn():
    client, server = socket.socketpair()
    lingerer = Lingerer()
    lingerer.start()
    conn = GuardedConn(Config(), server, ("127.0.0.1", 1), ("127.0.0.1", 2), Deadlines(0.5, 0.3, 1.0), lingerer)
    yield client, conn
    client.close()
    server.close()


def test_a_head_is_gathered_as_it_arrives_without_blocking(client_and_conn):
    client, conn = client_and_conn
    assert conn.gather() == "partial"  # nothing yet: it returns at once (the connection goes back to the poller)
    client.sendall(b"POST /features?layers=fc HTTP/1.1\r\nHost: x\r\n")
    assert conn.gather() == "partial"
    client.sendall(b"Content-Length: 3\r\n\r\nabc")
    assert conn.gather() == "complete"
    conn.init()
    request = next(conn.parser)
    assert (request.method, request.path, request.query) == ("POST", "/features", "layers=fc")
    assert request.body.read() == b"abc"  # the gathered bytes beyond the head are the body's


def test_a_head_that_outlasts_its_deadline_expires_and_a_closed_one_ends(client_and_conn):
    client, conn = client_and_conn
    client.sendall(b"GET /ready HTTP/1.1\r\n")
    assert conn.gather() == "partial"
    time.sleep(0.6)
    assert conn.gather() == "expired"
    client.shutdown(socket.SHUT_WR)
    assert conn.gather() == "closed"


def parsed(client, conn, head: bytes):
    """The request gunicorn's parser reads from ``conn`` once ``head`` (and what follows it) is sent."""
    client.sendall(head)
    assert conn.gather() == "complete"
    conn.init()
    return next(conn.parser)


def test_a_body_that_stalls_times_out_after_one_read_timeout(client_and_conn):
    client, conn = client_and_conn
    request = parsed(client, conn, b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
    started = time.monotonic()
    with pytest.raises(BodyTimeout, match=r"no byte of the request body arrived for 0\.3 s"):
        request.body.read(100)
    assert time.monotonic() - started >= 0.3  # (an upper bound would be a timed assertion on a busy machine)


def test_a_body_that_trickles_times_out_at_the_request_deadline(client_and_conn):
    """A byte every 0.1 s never lets one read wait 0.3 s, but the whole body is due within 1 s."""
    client, conn = client_and_conn
    request = parsed(client, conn, b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    stop = threading.Event()

    def trickle():
        while not stop.wait(0.1):
            client.send(b"a")

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        with pytest.raises(BodyTimeout, match="within the request's deadline"):
            request.body.read(100)
    finally:
        stop.set()
        sender.join()
