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

A body that arrives too slowly (service/frontends/http/worker.py puts deadlines on its reads) is
:class:`~service.core.errors.RequestTimedOut` (408): the request ends, its queue room with it, and
the connection closes.

The closing goes through gunicorn's response object (``start_response.__self__.force_close``);
under another WSGI server the gate only drains what it may (bodies with a length, up to DRAIN_BYTES).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from service.core.errors import RequestTimedOut

# A refused upload's remainder up to this is read and dropped, keeping the connection; beyond, it closes.
DRAIN_BYTES = 64 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# pre_request and the app run in the same worker thread (gthread and sync workers alike).
_deferred = threading.local()


def defer_continue(req) -> None:
    """gunicorn ``pre_request`` hook: keep gunicorn from sending ``100 Continue`` before the app decides."""
    # gunicorn ≥ 27 records the expectation here and sends the interim answer after this hook when it
    # is set (earlier versions sent it while parsing: there is then nothing to defer, and nothing breaks).
    _deferred.pending = bool(getattr(req, "_expected_100_continue", False))
    if _deferred.pending:
        req._expected_100_continue = False


class _Body:
    """``wsgi.input`` that counts what the app read, and sends a deferred ``100 Continue`` on the first read."""

    def __init__(self, stream, invite_through=None):
        self._stream, self._socket = stream, invite_through
        self.invited = invite_through is None  # nothing to invite: nobody asked, or gunicorn already answered
        self.read_bytes = 0
        self.at_end = False
        self.timed_out = False

    def _invite(self) -> None:
        if not self.invited:
            self.invited = True
            self._socket.sendall(CONTINUE)

    def _count(self, data: bytes) -> bytes:
        self.read_bytes += len(data)
        self.at_end = self.at_end or not data
        return data

    def read(self, *args):
        self._invite()
        return self._count(self._timed(self._stream.read, *args))

    def readline(self, *args):
        self._invite()
        return self._count(self._timed(self._stream.readline, *args))

    def _timed(self, read: Callable[..., bytes], *args) -> bytes:
        """``read``, with a socket timeout turned into the client's error (not an OSError, which werkzeug
        would report as a disconnect)."""
        try:
            return read(*args)
        except TimeoutError as exc:
            self.timed_out = True
            raise RequestTimedOut(f"{exc}; the request was dropped, and may be sent again") from None

    def readlines(self, hint: int = -1):
        lines, size = [], 0
        for line in iter(self.readline, b""):
            lines.append(line)
            size += len(line)
            if 0 < hint <= size:
                break
        return lines

    def __iter__(self):
        return iter(self.readline, b"")


class UploadGate:
    """WSGI middleware: defers ``100 Continue`` to the first body read; drains or closes after the answer."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        deferred = getattr(_deferred, "pending", False) and "gunicorn.socket" in environ
        _deferred.pending = False
        body = _Body(environ["wsgi.input"], environ["gunicorn.socket"] if deferred else None)
        environ["wsgi.input"] = body

        def settle_then_start(status, headers, exc_info=None):
            if not _settle(body, environ):
                force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
                if force_close is not None:
                    force_close()  # gunicorn answers "Connection: close" and drops the rest unread
            return start_response(status, headers, exc_info)

        return self.app(environ, settle_then_start)


def _settle(body: _Body, environ: dict) -> bool:
    """Read and drop a small unread remainder; False when the connection should close instead.

    It closes when the client was never invited to send its body, when the body timed out, when more
    than DRAIN_BYTES are left, and when a chunked body was not read to its end (its remainder is unknown).
    """
    if not body.invited or body.timed_out:
        return False
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        return False
    if length < 0:  # no length: chunked (gunicorn), or no body at all
        return body.at_end or "chunked" not in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    remaining = length - body.read_bytes
    if remaining > DRAIN_BYTES:
        return False
    try:
        while remaining > 0 and (chunk := body.read(min(remaining, 1 << 14))):
            remaining -= len(chunk)
    except Exception:  # noqa: BLE001 - the client went away mid-body: do not reuse the connection
        return False
    return True
