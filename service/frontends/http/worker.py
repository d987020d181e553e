"""gunicorn's threaded worker with deadlines on what clients send: no thread waits on a slow client.

gunicorn's ``gthread`` worker gives a connection a thread as soon as its first bytes arrive, and
that thread then blocks, with no timeout, until the request's headers are complete, and again on
every read of its body. 64 sockets that send half a header take 64 threads, and the readiness
probe then waits behind them; 32 uploads that stop after 4 bytes hold their threads, and the
queue room the app reserved for them, for as long as their sockets stay open.

:class:`GuardedThreadWorker` changes two things and keeps the rest of gthread as it is:

- **Headers are gathered without a thread.** A connection's bytes are read without blocking,
  as they arrive, into a buffer on the connection. Until the blank line that ends the headers
  is there, the connection goes back to gthread's poller (its "pending" connections), holding no
  thread. A request's headers must be complete within ``header_timeout_s`` of its first byte,
  or it is answered 408 and closed. Only a complete request head reaches a thread, handed to
  gunicorn's own parser (``Unreader.unread``).
- **Body reads have deadlines.** Each read of the socket waits at most ``body_read_timeout_s``,
  and the whole body must have arrived by the request's deadline (``request_timeout_s`` after
  its headers). A read past either raises :class:`BodyTimeout`; service/frontends/http/upload_gate.py
  turns it into a 408 that releases the request's queue room and closes the connection.

A third change: a connection closed after its answer lingers (reads what the client still sends,
for up to 2 s, so that the answer is not cut by a reset) on :class:`Lingerer`'s thread. gthread
lingers on its main thread, which accepts and dispatches every connection: 32 clients that keep
their sockets open after a 408 stopped the whole worker for a minute.

A fourth: connections are balanced across the workers. Each worker accepts from the shared
socket, and a keep-alive connection stays with the worker that took it; a worker that holds more
connections than another stops accepting until the other has caught up (the counts are shared
through service/ops/cores.py), so 4 clients of two workers split 2 and 2, not 4 and 0.

TLS and HTTP/2 are not gathered (the service speaks plain HTTP/1.1 behind its load balancer):
with either configured, connections are served by gthread unchanged.
"""

from __future__ import annotations

import errno
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass

from gunicorn.workers import gthread

from service.core.settings import Settings
from service.ops import cores

# How long a stop waits for running requests before the workers are killed (gunicorn's graceful_timeout).
# Here, not in service/gunicorn_conf.py, because importing that module sets the metrics environment.
GRACEFUL_TIMEOUT_S = 30

# A request head this large without its end is handed to gunicorn's parser, whose limits refuse it.
MAX_GATHERED_BYTES = 64 * 1024
HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# How often a worker that left new connections to another looks again (gthread's loop otherwise waits up to 1 s
# for an event): the longest a new connection can wait in the backlog while both workers look away.
BALANCE_RECHECK_S = 0.02


@dataclass(frozen=True)
class Deadlines:
    """How long a client may take: its request head, one read of its body, the whole request."""

    header_s: float
    body_read_s: float
    request_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Deadlines:
        return cls(settings.header_timeout_s, settings.body_read_timeout_s, settings.request_timeout_s)


class BodyTimeout(TimeoutError):
    """A request body did not arrive in time: one read waited too long, or the request's deadline passed."""


class _DeadlineSocket:
    """The socket gunicorn's parser reads a request body from: each ``recv`` within the read timeout, and
    none past the request's deadline. Only ``recv`` is used by the parser (``SocketUnreader``)."""

    def __init__(self, sock: socket.socket, conn: GuardedConn):
        self._sock, self._conn = sock, conn

    def recv(self, size: int) -> bytes:
        remaining = self._conn.body_deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout("the request body did not arrive within the request's deadline")
        read_timeout = self._conn.deadlines.body_read_s
        self._sock.settimeout(min(read_timeout, remaining))
        try:
            return self._sock.recv(size)
        except TimeoutError:
            if remaining <= read_timeout:
                raise BodyTimeout("the request body did not arrive within the request's deadline") from None
            raise BodyTimeout(f"no byte of the request body arrived for {read_timeout:g} s") from None
        finally:
            self._sock.settimeout(read_timeout)  # the answer is written with this timeout too


class Lingerer(threading.Thread):
    """Closes sockets gracefully off the worker's main thread: half-close, read what is left, close.

    RFC 9112 section 9.6: closing a socket whose client is still sending makes the kernel answer
    with a reset, which can discard the answer the client has not read yet. So the write side
    closes first, and the socket is read and dropped until the client closes it, ``linger_s``
    passes, or ``max_drain`` bytes came (gunicorn's own close_graceful, on one thread for all).
    """

    def __init__(self, linger_s: float = 2.0, max_drain: int = 64 * 1024):
        super().__init__(name="layertap-linger", daemon=True)
        self.linger_s, self.max_drain = linger_s, max_drain
        self._new: queue.SimpleQueue = queue.SimpleQueue()
        self._selector = selectors.DefaultSelector()
        self._until: dict[socket.socket, tuple[float, int]] = {}  # socket → (deadline, bytes drained)

    def close(self, sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._new.put(sock)

    def run(self) -> None:
        while True:
            if not self._until:
                self._new.put(self._new.get())  # nothing lingers: sleep until something does
            while not self._new.empty():
                sock = self._new.get()
                self._until[sock] = (time.monotonic() + self.linger_s, 0)
                self._selector.register(sock, selectors.EVENT_READ)
            for key, _ in self._selector.select(timeout=0.1) if self._until else ():
                sock = key.fileobj
                try:
                    data = sock.recv(self.max_drain)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                deadline, drained = self._until[sock]
                self._until[sock] = (deadline if data else 0.0, drained + len(data))
            now = time.monotonic()
            for sock, (deadline, drained) in list(self._until.items()):
                if deadline <= now or drained >= self.max_drain:
                    self._selector.unregister(sock)
                    del self._until[sock]
                    sock.close()


class GuardedConn(gthread.TConn):
    """A connection that gathers its request head before a thread takes it, and reads its body with deadlines."""

    def __init__(self, cfg, sock, client, server, deadlines: Deadlines, lingerer: Lingerer):
        super().__init__(cfg, sock, client, server)
        self.deadlines, self.lingerer = deadlines, lingerer
        self.head = bytearray()
        self.head_deadline: float | None = None
        self.body_deadline = float("inf")

    def gather(self) -> str:
        """Read what the socket holds without blocking: ``complete``, ``partial``, ``closed`` or ``expired``."""
        now = time.monotonic()
        if self.head_deadline is None:
            self.head_deadline = now + self.deadlines.header_s
        self.sock.setblocking(False)
        try:
            while len(self.head) < MAX_GATHERED_BYTES:
                data = self.sock.recv(MAX_GATHERED_BYTES)
                if not data:
                    return "closed"
                self.head += data
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return "closed"
        buffered = self.parser.unreader.buf.getvalue() if self.parser is not None else b""
        seen = bytes(buffered) + bytes(self.head)
        if any(end in seen for end in HEAD_ENDS) or len(seen) >= MAX_GATHERED_BYTES:
            return "complete"
        return "expired" if now >= self.head_deadline else "partial"

    def init(self):
        """gthread's ``init``, then: the gathered head into the parser, and the body's reads under deadlines."""
        super().init()
        # The read timeout also bounds writing the answer to a client that stops reading it.
        self.sock.settimeout(self.deadlines.body_read_s)
        unreader = self.parser.unreader
        if not isinstance(unreader.sock, _DeadlineSocket):
            unreader.sock = _DeadlineSocket(self.sock, self)
        if self.head:
            unreader.buf.seek(0, 2)
            unreader.buf.write(bytes(self.head))  # after any read-ahead: the bytes came in that order
            self.head.clear()
        self.head_deadline = None
        self.body_deadline = time.monotonic() + self.deadlines.request_s

    def close(self, graceful: bool = False) -> None:
        """gthread closes on its main thread: a graceful close lingers on the :class:`Lingerer`'s instead."""
        if graceful:
            self.lingerer.close(self.sock)
        else:
            super().close()

    def refuse_slow_head(self) -> None:
        """Answer 408 without blocking and shut the socket, so that gthread's graceful close does not linger."""
        try:
            self.sock.send(REQUEST_TIMEOUT)
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class GuardedThreadWorker(gthread.ThreadWorker):
    """gthread, with request heads gathered off the thread pool and body reads under deadlines (module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadlines = Deadlines.from_settings(Settings())  # the same LAYERTAP_* variables as the app
        self.lingerer = Lingerer()

    def init_process(self):
        self.lingerer.start()  # after fork: threads do not survive it
        super().init_process()

    def accept(self, listener):
        """gthread's ``accept``, with a :class:`GuardedConn`."""
        try:
            client_sock, client_addr = listener.accept()
            self.nr_conns += 1
            client_sock.setblocking(True)
            conn = GuardedConn(
                self.cfg, client_sock, client_addr, listener.getsockname(), self.deadlines, self.lingerer
            )
            self.enqueue_req(conn)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def wait_for_and_dispatch_events(self, timeout):
        """gthread's loop step, after leaving new connections to a worker that holds fewer (module doc)."""
        cores.publish_connections(self.nr_conns if self.alive else None)
        fewest = cores.fewest_connections_elsewhere()
        if self.alive and self._accepting and fewest is not None and self.nr_conns > fewest:
            self.set_accept_enabled(False)  # gthread's loop enables it again next turn; this check then repeats
            timeout = min(timeout, BALANCE_RECHECK_S)
        super().wait_for_and_dispatch_events(timeout)

    def finish_request(self, conn, fs):
        """gthread's, then: a connection back on the poller waiting for the rest of its head is closed at its head
        deadline, not only after gthread's keepalive (a silent one never becomes readable to be checked)."""
        super().finish_request(conn, fs)
        deadline = getattr(conn, "head_deadline", None)
        if deadline is not None and conn.timeout is not None:
            conn.timeout = min(conn.timeout, deadline)

    def handle(self, conn):
        if not isinstance(conn, GuardedConn) or self.cfg.is_ssl or conn.is_http2:
            return super().handle(conn)
        state = conn.gather()
        if state == "partial":
            return gthread._DEFER  # back to the poller, holding no thread, until more bytes come
        if state == "expired":
            self.log.info("closed a connection from %s: its request head took over %g s", conn.client,
                          self.deadlines.header_s)  # fmt: skip
            conn.refuse_slow_head()
            return False
        if state == "closed":
            return False
        conn.data_ready = True  # gthread's own wait for a first byte is over: the head is here
        return super().handle(conn)
