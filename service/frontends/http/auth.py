"""Optional bearer-token authentication (``LAYERTAP_API_KEY``), compared in constant time.

Which routes stay open without a key (probes, metrics, the page and the document) is declared by
each front-end (service/frontends/http/registry.py), not here.
"""

from __future__ import annotations

import hmac

from service.core.errors import ServiceError


class Unauthorized(ServiceError):
    """No valid bearer token; the HTTP layer answers 401 with a challenge."""

    code = "unauthorized"


def check_bearer(authorization: str | None, api_key: str) -> None:
    """Raise Unauthorized unless ``authorization`` is ``Bearer <api_key>``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("this endpoint needs an 'Authorization: Bearer <key>' header")
    if not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise Unauthorized("the API key is not valid")
