"""Optional bearer-token authentication (``LAYERTAP_API_KEY``), compared in constant time."""

from __future__ import annotations

import hmac

from service.core.errors import ServiceError


class Unauthorized(ServiceError):
    """No valid bearer token; the HTTP layer answers 401 with a challenge."""

    code = "unauthorized"


# Liveness and readiness, of both front-ends: what orchestrators poll.
PROBE_ENDPOINTS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready"})
# Endpoints that stay open even with a key, so that probes and scrapers need no secret,
# unless LAYERTAP_AUTH_ALL_ENDPOINTS is on.
OPEN_ENDPOINTS = PROBE_ENDPOINTS | {"/", "/metrics", "/openapi.json"}
OPEN_PREFIXES = ("/docs", "/ui/")


def check_bearer(authorization: str | None, api_key: str) -> None:
    """Raise Unauthorized unless ``authorization`` is ``Bearer <api_key>``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this endpoint needs an 'Authorization: Bearer <key>' header")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise Unauthorized("the API key is not valid")
