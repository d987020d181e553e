"""A Python client for layertap: features for images, with retries on overload, as numpy arrays.

    from layertap_client import LayertapClient
    vectors = LayertapClient("http://localhost:8080").features([b"...jpeg bytes..."], ["avgpool"], pool="avg")
    heatmaps = LayertapClient("http://localhost:8080").explain([b"...jpeg bytes..."], "gradcam", layer="layer4")

The command line (``layertap embed``) lives in ``cli.py``. This package is its own distribution
(``client/pyproject.toml``): it needs requests, numpy and tqdm, never torch.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass

import numpy as np
import requests

__version__ = "0.1.0"

RETRY_STATUSES = (429, 503)


class LayertapError(Exception):
    """The service refused a request for a reason retrying cannot fix (a 4xx other than 429)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass
class LayertapClient:
    url: str
    api_key: str | None = None
    model: str | None = None  # the model to ask when a call names none; None: the server's default
    timeout: float = 120
    max_retries: int = 8
    backoff_s: float = 0.25  # first wait; doubles each retry, up to 10 s, unless Retry-After says more

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self._session = requests.Session()
        if self.api_key:
            self._session.headers["Authorization"] = f"Bearer {self.api_key}"

    def features(
        self,
        images: list[bytes],
        layers: list[str] | None = None,
        pool: str = "none",
        normalize: bool = False,
        model: str | None = None,
    ) -> dict[str, np.ndarray]:
        """One float32 array ``(len(images), ...)`` per layer; retries 429/503 and dropped connections.

        ``layers=None`` asks for the model's default layer (its embedding, :meth:`info` names it),
        ``model=None`` for this client's model, else the server's default model.
        """
        params = {"encoding": "base64", "pool": pool, "normalize": str(normalize).lower()}
        if layers:
            params["layers"] = ",".join(layers)
        body = self._post("/features", params, images, model)
        return {name: _decode(feature) for name, feature in body["features"].items()}

    def explain(
        self,
        images: list[bytes],
        method: str = "gradcam",
        layer: str | None = None,
        target: int | None = None,
        steps: int | None = None,
        model: str | None = None,
    ) -> list[dict]:
        """Per image: the class explained (``target``, ``label``, ``score``, ``probability``) and its maps as arrays.

        ``method``: gradcam, gradcam++, layercam, hirescam (``layer``: a spatial layer, default the
        model's last) or integrated_gradients (``steps``, default 50). ``target=None`` explains
        each image's top-1 class. ``map`` is at the layer's resolution (the input's, for integrated
        gradients); ``upsampled``, for the CAM methods, is scaled to [0, 1] at the input's size.
        """
        params: dict[str, str] = {"encoding": "base64", "method": method}
        for key, value in (("layer", layer), ("target", target), ("steps", steps)):
            if value is not None:
                params[key] = str(value)
        body = self._post("/explain", params, images, model)
        return [
            {
                **{key: item[key] for key in ("target", "label", "score", "probability")},
                "map": _decode(item["map"]),
                "upsampled": _decode(item["upsampled"]) if "upsampled" in item else None,
            }
            for item in body["explanations"]
        ]

    def _post(self, path: str, params: dict[str, str], images: list[bytes], model: str | None) -> dict:
        """POST the images as multipart parts; retries 429/503 and dropped connections; the JSON answer."""
        if model or self.model:
            params["model"] = model or self.model
        files = [("image", (f"{i}", data, "application/octet-stream")) for i, data in enumerate(images)]
        for attempt in range(self.max_retries + 1):
            try:
                response = self._session.post(f"{self.url}{path}", params=params, files=files, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout):
                if attempt == self.max_retries:
                    raise
                self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self._sleep(attempt, response.headers.get("Retry-After"))
                continue
            if response.status_code != 200:
                error = _error(response)
                raise LayertapError(
                    response.status_code, error.get("code", "error"), error.get("message", response.text)
                )
            return response.json()
        raise AssertionError("unreachable")

    def info(self, model: str | None = None) -> dict:
        """The server's description of a model: its default layer, classifier, layers, limits."""
        params = {"model": model or self.model} if model or self.model else {}
        response = self._session.get(f"{self.url}/info", params=params, timeout=self.timeout)
        if response.status_code != 200:
            error = _error(response)
            raise LayertapError(response.status_code, error.get("code", "error"), error.get("message", response.text))
        return response.json()

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        wait = min(10.0, self.backoff_s * 2**attempt) * (0.5 + random.random())  # jitter: clients must not sync up
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            wait = max(wait, float(retry_after))
        time.sleep(wait)


def _decode(feature: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(feature["data"]), dtype="<f4").reshape(feature["shape"])


def _error(response: requests.Response) -> dict:
    try:
        return response.json().get("error", {})
    except ValueError:
        return {"message": response.text[:300]}
