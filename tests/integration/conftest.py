"""The module-scoped real server used by most integration tests (see stress/server.py for the launcher)."""

from __future__ import annotations

import pytest

from stress.server import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights_file):
    server = start_server(
        tmp_path_factory.mktemp("server"),
        {
            "LAYERTAP_WEIGHTS": str(weights_file),
            "LAYERTAP_MAX_BODY_BYTES": "1000000",
            "LAYERTAP_MAX_PIXELS": "4000000",
            "LAYERTAP_MAX_IMAGES_PER_REQUEST": "8",
        },
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
