"""Domain errors: what went wrong, in words for the client and a stable machine-readable code.

The data plane, the runners and the preprocessing raise these; they know nothing of HTTP. Each
front-end renders them in its protocol's body (the layertap API's ``{"error": {"code", "message"}}``,
the Open Inference Protocol's ``{"error": message}``), with the status from one table shared by all
of them (``STATUSES`` in service/frontends/http/errors.py), where ``retry_after_s`` becomes a
``Retry-After`` header. No client fault is ever an :class:`InternalError`.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: a message meant for the client, a stable ``code``, and when a retry may succeed."""

    code = "internal_error"

    def __init__(self, message: str, *, retry_after_s: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    """The request cannot be served as asked; retrying it unchanged will fail again."""

    code = "bad_request"


class RequestTimedOut(InvalidRequest):
    """The client sent its request too slowly (a body that stalls, or one that outlasts the deadline)."""

    code = "request_timeout"


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class UnknownLayer(InvalidRequest):
    code = "unknown_layer"


class LayerUnavailable(InvalidRequest):
    """A layer of the float model that does not exist in this precision (fused away in int8)."""

    code = "layer_unavailable"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


class TextTooLong(InvalidRequest):
    """A text with more tokens than the model's text tower takes, and no truncation asked for."""

    code = "text_too_long"


class TextUnsupported(InvalidRequest):
    """Text sent to a model without a text tower."""

    code = "text_unsupported"


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"


class TooLarge(InvalidRequest):
    """Over a size limit: the body, an image's pixels, the number of images."""

    code = "payload_too_large"


class ImageTooLarge(TooLarge):
    code = "image_too_large"


class AnswerTooLarge(TooLarge):
    """The answer asked for would be over the output budget (images × values of every layer asked for)."""

    code = "answer_too_large"


class TooManyImages(TooLarge):
    code = "too_many_images"


class Unavailable(ServiceError):
    """The service cannot take this work now; ``retry_after_s`` says when to try again."""


class Overloaded(Unavailable):
    code = "overloaded"


class NotReady(Unavailable):
    code = "not_ready"


class DeadlineExceeded(Unavailable):
    code = "deadline_exceeded"


class InternalError(ServiceError):
    """The service's own fault: logged, never caused by what the client sent."""


class InferenceFailed(InternalError):
    code = "inference_failed"


class StartupError(Exception):
    """The service cannot start as configured; the message says what to change."""


class WeightsUnavailable(StartupError):
    """The configured weights cannot be loaded."""
