"""What becomes of a request body the app did not read: the ``Expect: 100-continue`` handshake, and the connection.

A refusal must cost far less than the work it refuses, and most refusals (429 when the queue is
full, 400 for an unknown layer, 401, 404) are decided from the URL and headers alone. Two things
would still make the server pay for the upload it is about to refuse:

- gunicorn answers ``Expect: 100-continue`` as soon as it has parsed the headers, before the app
  has seen the request, so a client that asked first uploads its body anyway. The gunicorn hook
  :func:`defer_continue` (``pre_request`` in service/gunicorn_conf.py) takes that answer back,
  and :class:`UploadGate` sends the ``100 Continue`` only when the app starts reading the body.
- an unread body must be read off the socket before a kept-alive connection can carry the next
  request. :class:`UploadGate` reads at most :data:`DRAIN_BYTES` of it; a larger remainder, or a
  body the client was never invited to send, closes the connection instead (``Connection: close``).

The closing goes through gunicorn's response object (``start_response.__self__.force_close``);
under another WSGI server the gate only drains.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

# A refused upload's remainder up to this is read and dropped, keeping the connection; beyond, it closes.
DRAIN_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# pre_request and the app run in the same worker thread (gthread and sync workers alike).
_deferred = threading.local()


def defer_continue(req) -> None:
    """gunicorn ``pre_request`` hook: keep gunicorn from sending ``100 Continue`` before the app decides."""
    # gunicorn 23 to 27 record the expectation here, and send the interim answer when it is set.
    _deferred.pending = bool(getattr(req, "_expected_100_continue", False))
    if _deferred.pending:
        req._expected_100_continue = False


class _ContinueOnRead:
    """``wsgi.input`` that sends the deferred ``100 Continue`` on the first read."""

    def __init__(self, stream, sock):
        self._stream, self._sock = stream, sock
        self.invited = False

    def _invite(self) -> None:
        if not self.invited:
            self.invited = True
            self._sock.sendall(CONTINUE)

    def read(self, *args):
        self._invite()
        return self._stream.read(*args)

    def readline(self, *args):
        self._invite()
        return self._stream.readline(*args)

    def readlines(self, *args):
        self._invite()
        return self._stream.readlines(*args)

    def __iter__(self):
        self._invite()
        return iter(self._stream)


class UploadGate:
    """WSGI middleware: defers ``100 Continue`` to the first body read; drains or closes after the answer."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        gate = None
        if getattr(_deferred, "pending", False) and "gunicorn.socket" in environ:
            _deferred.pending = False
            gate = _ContinueOnRead(environ["wsgi.input"], environ["gunicorn.socket"])
            environ["wsgi.input"] = gate

        def settle_then_start(status, headers, exc_info=None):
            if _must_close(environ, gate):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()  # gunicorn answers "Connection: close" and drops the rest unread
            return start_response(status, headers, exc_info)

        return self.app(environ, settle_then_start)


def _must_close(environ: dict, gate: _ContinueOnRead | None) -> bool:
    """True when the unread body should not be read: never invited, or larger than DRAIN_BYTES."""
    if gate is not None and not gate.invited:
        return True
    stream = gate._stream if gate is not None else environ.get("wsgi.input")
    if stream is None:
        return False
    try:
        dropped = 0
        while chunk := stream.read(min(1 << 14, DRAIN_BYTES + 1 - dropped)):
            dropped += len(chunk)
            if dropped > DRAIN_BYTES:
                return True
    except Exception:  # noqa: BLE001 - bad chunked encoding, or the client went away: do not reuse
        return True
    return False
