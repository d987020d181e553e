"""Drills of hostile clients: what an attacker with a few sockets and tiny requests can make the service do.

Each drill talks to loopback only, bounds its own count and time, and returns a result whose
``passed`` states its pass line (stress/__main__.py prints them in the summary table).
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests as http

from .server import Server, rss_mb


def _open(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=60)


class Watcher(threading.Thread):
    """Records, for each socket, the first thing the server does with it: its status line (``""`` when it
    closes without one) and when."""

    def __init__(self, sockets: list[socket.socket]):
        super().__init__(daemon=True)
        self.selector = selectors.DefaultSelector()
        self.seen: dict[socket.socket, tuple[str, float]] = {}
        for sock in sockets:
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
        self.pending = len(sockets)
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        while self.pending and not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                self.seen[key.fileobj] = (data.split(b"\r\n", 1)[0].decode("latin-1"), time.monotonic())
                self.selector.unregister(key.fileobj)
                self.pending -= 1

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        self.stop.set()
        self.join()


@dataclass
class SlowClientsResult:
    stalled_uploads: int
    stalled_heads: int
    upload_answers: dict[str, int]  # status line → count, for the stalled uploads
    upload_answer_max_s: float  # the slowest of those answers, from the stall
    heads_closed_max_s: float  # the slowest close (or 408) of a stalled head, from its first byte
    ready_max_s: float  # the polite client's slowest /ready during the attack
    ready_probes: int
    features_max_s: float  # the polite client's slowest /features, 429 retries included
    features_statuses: dict[int, int]
    rss_growth_mb: float
    limit_s: float  # what "in time" means: the body read timeout (the head timeout is lower or equal) plus slack
    other_5xx: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            list(self.upload_answers) == ["HTTP/1.1 408 REQUEST TIMEOUT"]
            and self.upload_answer_max_s <= self.limit_s
            and self.heads_closed_max_s <= self.limit_s
            and self.ready_max_s < 2.0
            and set(self.features_statuses) == {200}
            and self.rss_growth_mb < 300
            and self.other_5xx == 0
        )


def slow_clients(
    server: Server, photo: bytes, uploads: int = 32, heads: int = 64, body_read_timeout_s: float = 10.0
) -> SlowClientsResult:
    """``uploads`` sockets send a /features head announcing 100,000 bytes, then 4, then nothing; ``heads``
    sockets send a request line and one header and never finish (half of them trickle a byte a second).
    Meanwhile a polite client probes /ready twice a second and posts a photo (retrying its 429s)."""
    worker = server.workers()[0]
    rss_before = rss_mb(worker)
    started = time.monotonic()
    stalled_uploads = []
    for _ in range(uploads):
        sock = _open(server.url)
        sock.sendall(
            b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 100000\r\n\r\n\x89PNG"
        )
        stalled_uploads.append((sock, time.monotonic()))
    stalled_heads = []
    for _ in range(heads):
        sock = _open(server.url)
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n")
        stalled_heads.append((sock, time.monotonic()))
    stop = threading.Event()

    def trickle() -> None:  # half of the heads keep sending, one byte a second, so they never look idle
        while not stop.wait(1.0):
            for sock, _ in stalled_heads[::2]:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    uploads_watch = Watcher([sock for sock, _ in stalled_uploads])
    heads_watch = Watcher([sock for sock, _ in stalled_heads])
    ready_times, ready_5xx = [], 0
    features_statuses: dict[int, int] = {}
    features_max = 0.0
    polite = http.Session()
    deadline = started + body_read_timeout_s + 4
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            status = polite.get(f"{server.url}/ready", timeout=30).status_code
        except http.RequestException:
            status = 0
        ready_times.append(time.monotonic() - t0 if status == 200 else float("inf"))
        ready_5xx += status >= 500
        if len(ready_times) % 4 == 1:  # a /features every other second: it waits out the stalled uploads' room
            t0 = time.monotonic()
            while True:
                answer = polite.post(f"{server.url}/features", data=photo, timeout=60)
                if answer.status_code != 429 or time.monotonic() - t0 > 30:
                    break
                time.sleep(float(answer.headers.get("Retry-After", "1")))
            features_statuses[answer.status_code] = features_statuses.get(answer.status_code, 0) + 1
            features_max = max(features_max, time.monotonic() - t0)
        time.sleep(0.5)
    uploads_watch.finish(timeout=5)
    heads_watch.finish(timeout=5)
    stop.set()
    trickler.join()
    upload_answers: dict[str, int] = {}
    upload_max = heads_max = float("inf") if uploads_watch.pending or heads_watch.pending else 0.0
    for sock, sent in stalled_uploads:
        line, at = uploads_watch.seen.get(sock, ("no answer", float("inf")))
        upload_answers[line] = upload_answers.get(line, 0) + 1
        upload_max = max(upload_max, at - sent)
    for sock, sent in stalled_heads:
        heads_max = max(heads_max, heads_watch.seen.get(sock, ("", float("inf")))[1] - sent)
    for sock, _ in stalled_uploads + stalled_heads:
        sock.close()
    return SlowClientsResult(
        stalled_uploads=uploads,
        stalled_heads=heads,
        upload_answers=upload_answers,
        upload_answer_max_s=upload_max,
        heads_closed_max_s=heads_max,
        ready_max_s=max(ready_times),
        ready_probes=len(ready_times),
        features_max_s=features_max,
        features_statuses=features_statuses,
        rss_growth_mb=rss_mb(worker) - rss_before,
        limit_s=body_read_timeout_s + 3,
        other_5xx=ready_5xx + sum(n for status, n in features_statuses.items() if status >= 500),
    )


@dataclass
class AttackResult:
    """One drill's outcome: what was sent, what the service did, and whether that meets the pass line."""

    drill: str
    pass_line: str
    figures: str
    passed: bool


def _post(url: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, int, float]:
    """Status, answer bytes and seconds of one POST."""
    started = time.monotonic()
    answer = http.post(url, data=data, headers=headers or {}, timeout=timeout)
    return answer.status_code, len(answer.content), time.monotonic() - started


def _post_until_admitted(url: str, data: bytes, patience_s: float = 60) -> int:
    """The status of ``data`` posted until it is not a 429 (a big decode waits for room), honouring Retry-After."""
    deadline = time.monotonic() + patience_s
    while True:
        answer = http.post(url, data=data, timeout=120)
        if answer.status_code != 429 or time.monotonic() > deadline:
            return answer.status_code
        time.sleep(float(answer.headers.get("Retry-After", "1")))


def _float_tiff(side: int) -> bytes:
    """A float32 TIFF of side×side zeros: a few hundred kB compressed, 4 bytes a pixel once decoded."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.float32), "F").save(buffer, "TIFF", compression="tiff_deflate")
    return buffer.getvalue()


def _sixteen_bit_png(side: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint16)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _multipart(parts: list[bytes]) -> tuple[bytes, dict[str, str]]:
    boundary = "layertap-drill"
    head = '--{b}\r\nContent-Disposition: form-data; name="image"; filename="{i}"\r\n\r\n'
    body = b"".join(head.format(b=boundary, i=i).encode() + part + b"\r\n" for i, part in enumerate(parts))
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def tiny_requests(server: Server, tiny_png: bytes, all_layers: str) -> list[AttackResult]:
    """Small requests that used to cost far more than their size: every layer as JSON, many images of it,
    a huge v2 name, a JSON body of numbers, an explanation of 2,000 passes, decode bombs."""
    import base64
    import gzip
    import json

    worker = server.workers()[0]
    rss_before = rss_mb(worker)
    results = []
    features = f"{server.url}/features?layers={all_layers}"
    packed_all = _post(f"{features}&encoding=base64", tiny_png, {"Content-Type": "image/png"})
    body, headers = _multipart([tiny_png] * 4)
    four = _post(features, body, headers)
    results.append(
        AttackResult(
            "tiny request, huge answer",
            "every layer of 4 images in an 882-byte body is 413 at once (the output budget); every layer of one "
            "image in base64 is served",
            f"4 images {four[0]} in {four[2] * 1000:.0f} ms; one image in base64 {packed_all[0]} "
            f"({packed_all[1] / 1e6:.0f} MB answer)",
            four[0] == 413 and packed_all[0] == 200 and four[2] < 1,
        )
    )
    name = "layer4" * 3_200_000  # 19 MB, an 18 kB gzip
    document = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                            "data": [base64.b64encode(tiny_png).decode()]}], "outputs": [{"name": name}]}  # fmt: skip
    squeezed = gzip.compress(json.dumps(document).encode())
    long_name = _post(
        f"{server.url}/v2/models/resnet18/infer",
        squeezed,
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    results.append(
        AttackResult(
            "a 19 MB v2 name",
            f"a {len(squeezed) / 1000:.0f} kB gzip naming a 19 MB output is 400 at once, quoting a few dozen bytes",
            f"{long_name[0]}, {long_name[1]} bytes, {long_name[2] * 1000:.0f} ms",
            long_name[0] == 400 and long_name[1] < 2000 and long_name[2] < 2,
        )
    )
    numbers = b'{"images": [' + b"1," * 4_000_000 + b"1]}"
    parsed = _post(f"{server.url}/features", numbers, {"Content-Type": "application/json"})
    results.append(
        AttackResult(
            "a JSON body of numbers",
            "8 MB of numbers to /features is 413 before it is parsed",
            f"{parsed[0]} in {parsed[2] * 1000:.0f} ms",
            parsed[0] == 413 and parsed[2] < 2,
        )
    )
    body, headers = _multipart([tiny_png] * 8)
    costly = _post(f"{server.url}/explain?method=integrated_gradients&steps=256", body, headers)
    results.append(
        AttackResult(
            "an explanation of 2,056 passes",
            "integrated gradients at 256 steps on 8 images is 413 before any pass",
            f"{costly[0]} in {costly[2] * 1000:.0f} ms",
            costly[0] == 413 and costly[2] < 2,
        )
    )
    bombs = [_float_tiff(6300), _sixteen_bit_png(6300), _float_tiff(6300)]
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda data=data: statuses.append(_post_until_admitted(f"{server.url}/features", data)))
        for data in bombs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    growth = rss_mb(worker) - rss_before
    results.append(
        AttackResult(
            "small files, big decodes, three at once",
            "two 6300×6300 float TIFFs and a 16-bit PNG at once: served (a 429 while others decode is retried), RSS "
            "within +300 MB over the whole drill",
            f"{sorted(statuses)}; files {', '.join(f'{len(b) / 1000:.0f} kB' for b in bombs)}; RSS {growth:+.0f} MB",
            sorted(statuses) == [200, 200, 200] and growth < 300,
        )
    )
    return results


def slow_clients_row(result: SlowClientsResult) -> AttackResult:
    return AttackResult(
        "slow clients",
        f"while {result.stalled_uploads} uploads stall and {result.stalled_heads} sockets hold half-sent heads, "
        "/ready answers within 2 s and /features within the deadline; the stalled uploads get 408; RSS within "
        "+300 MB; no 5xx",
        f"/ready max {result.ready_max_s * 1000:.0f} ms over {result.ready_probes} probes; /features max "
        f"{result.features_max_s:.1f} s {result.features_statuses}; uploads {result.upload_answers} within "
        f"{result.upload_answer_max_s:.1f} s; heads closed within {result.heads_closed_max_s:.1f} s; RSS "
        f"{result.rss_growth_mb:+.0f} MB",
        result.passed,
    )
