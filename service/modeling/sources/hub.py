"""The Hugging Face hub, as timm, transformers and open_clip read it: cache only unless downloads are allowed.

All three fetch through ``huggingface_hub``, which keeps what it fetched in its cache
(``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``) and reads it from there in offline mode.
Offline mode is a flag that ``huggingface_hub`` reads on every request; :func:`hub_access` sets it
while a model is built with ``LAYERTAP_ALLOW_DOWNLOAD`` off, so no library can reach the network
behind the service's back, and turns the libraries' many "not found" errors into one
:class:`WeightsUnavailable` that names the cache and the command that fills it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import constants

from service.core.errors import StartupError, WeightsUnavailable
from service.core.text import first_line
from service.modeling.weights import ALTERNATIVES, HubAccess

FILL = "`python -m service weights download` (with LAYERTAP_ALLOW_DOWNLOAD=true) where there is network"


def cache_dir(hub: HubAccess) -> Path:
    """The hub cache the libraries read: the configured one, else huggingface_hub's default."""
    return Path(hub.cache_dir) if hub.cache_dir is not None else Path(constants.HF_HUB_CACHE)


@contextmanager
def hub_access(hub: HubAccess, what: str) -> Iterator[None]:
    """Build ``what`` (a model or its processor, named for the error) under ``hub``'s rules."""
    offline_before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline_before or not hub.allow_download
    try:
        yield
    except StartupError:
        raise
    except Exception as exc:  # noqa: BLE001 - each library has its own "not cached", "not found" and network errors
        reason = first_line(exc)
        if "trust_remote_code" in str(exc):
            raise StartupError(
                f"{what} ships its own Python code, which layertap does not run unless LAYERTAP_TRUST_REMOTE_CODE=true "
                f"({reason})"
            ) from None
        if not hub.allow_download:
            raise WeightsUnavailable(
                f"{what} is not in the Hugging Face cache ({cache_dir(hub)}) and LAYERTAP_ALLOW_DOWNLOAD is off "
                f"({reason}); run {FILL}, or {ALTERNATIVES}"
            ) from None
        raise WeightsUnavailable(f"{what} cannot be loaded: {reason}; {ALTERNATIVES}") from None
    finally:
        constants.HF_HUB_OFFLINE = offline_before
