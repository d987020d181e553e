"""Domain errors: each carries the HTTP status and a stable machine-readable code.

The engine and the preprocessing raise these; one Flask handler renders them as
``{"error": {"code": ..., "message": ...}}``. Nothing below the HTTP layer knows about
Flask, and no client fault ever surfaces as a 5xx.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error with an HTTP status, a code and a message meant for the client."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class UnknownLayer(BadRequest):
    code = "unknown_layer"


class LayerUnavailable(BadRequest):
    """A layer of the float model that does not exist in this precision (fused away in int8)."""

    code = "layer_unavailable"


class InvalidImage(BadRequest):
    code = "invalid_image"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class ImageTooLarge(PayloadTooLarge):
    code = "image_too_large"


class TooManyImages(PayloadTooLarge):
    code = "too_many_images"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class Overloaded(ServiceError):
    status = 429
    code = "overloaded"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class DeadlineExceeded(ServiceError):
    status = 503
    code = "deadline_exceeded"


class InferenceFailed(ServiceError):
    status = 500
    code = "inference_failed"


class StartupError(Exception):
    """The service cannot start as configured; the message says what to change."""


class WeightsUnavailable(StartupError):
    """The configured weights cannot be loaded."""
