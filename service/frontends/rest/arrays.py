"""Arrays as the layertap API returns them: their shape, and their values as nested lists or base64 float32."""

from __future__ import annotations

import numpy as np
import pybase64


def encode_feature(array: np.ndarray, encoding: str) -> dict:
    """``encoding`` is ``json`` (nested lists, written by orjson) or ``base64`` (little-endian float32 bytes)."""
    return _base64_feature(array) if encoding == "base64" else _json_feature(array)


def _json_feature(array: np.ndarray) -> dict:
    return {"shape": list(array.shape), "data": array}


def _base64_feature(array: np.ndarray) -> dict:
    """Raw little-endian float32 bytes: a quarter of the JSON size, and no float parsing for the client."""
    little = array.astype("<f4", copy=False)
    return {
        "shape": list(array.shape),
        "dtype": "float32",
        "byteorder": "little",
        "encoding": "base64",
        "data": pybase64.b64encode(little.tobytes()).decode("ascii"),
    }
