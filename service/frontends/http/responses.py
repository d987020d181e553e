"""What every HTTP front-end answers with: JSON, the timing headers, readiness, and admitted work.

- :func:`json_response`: orjson, numpy arrays included.
- :func:`timing_headers`: where a request's time went, the same headers on every front-end.
- :func:`readiness`: the one readiness answer, 200, or 503 with ``Retry-After: 1``.
- :func:`admitted`: the one admit → read → run sequence. Room in the model's queue is held before
  the body is read, so a refusal under overload costs no upload and no decode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import orjson
from flask import Response, current_app, request

if TYPE_CHECKING:
    from service.batching.admission import Ticket
    from service.dataplane.plane import DataPlane
    from service.dataplane.timings import Timings

TIMING_HEADERS = ("X-Preprocess-Time", "X-Queue-Time", "X-Inference-Time", "X-Serialize-Time", "X-Total-Time")

Body = TypeVar("Body")
Result = TypeVar("Result")


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def timing_headers(timings: Timings, started: float, serialize_ms: float | None = None) -> dict[str, str]:
    """Milliseconds per stage, the request's total since ``started`` (perf_counter), and the forward pass's images.
    ``serialize_ms``: the answer's encoding, when it was encoded before the headers (not when it is streamed)."""
    headers = {
        "X-Preprocess-Time": f"{timings.preprocess_ms:.2f}",
        "X-Queue-Time": f"{timings.queue_ms:.2f}",
        "X-Inference-Time": f"{timings.inference_ms:.2f}",
        "X-Batch-Size": str(timings.batch_images),
    }
    if serialize_ms is not None:
        headers["X-Serialize-Time"] = f"{serialize_ms:.2f}"
    headers["X-Total-Time"] = f"{(time.perf_counter() - started) * 1000:.2f}"
    return headers


def readiness(ready: bool, body: dict) -> Response:
    """A readiness probe's answer: ``body`` with 200 when ready, else with 503 and ``Retry-After: 1``."""
    if ready:
        return json_response(body)
    return json_response(body, status=503, headers={"Retry-After": "1"})


def expects_continue() -> bool:
    """Whether the client waits for ``100 Continue`` before uploading: it waits about a second before it uploads
    anyway, so under overload it is refused at once rather than after the admission wait."""
    return request.headers.get("Expect", "").lower() == "100-continue"


def admitted(
    plane: DataPlane, model: str | None, read: Callable[[], Body], run: Callable[[Body, Ticket], Result]
) -> Result:
    """Hold room in ``model``'s queue, then ``read`` the request's body, then ``run`` it with the ticket.

    Validate everything the URL says before calling this: a typo then costs no upload either.
    """
    with plane.admit(model, wait=not expects_continue()) as ticket:
        return run(read(), ticket)


def data_plane() -> DataPlane:
    """The data plane of the app serving this request."""
    return current_app.extensions["layertap.dataplane"]
