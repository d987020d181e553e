"""Every layer's output shape, for any input size, from a weightless twin of the model on the meta device.

Meta tensors carry shapes and dtypes but no data, so tracing a 4096×4096 input costs nothing.
The twin is built on the meta device directly; a family whose constructor computes with
tensors (RegNet derives its widths from them) cannot be, so it is copied from the real model
and moved there instead. A size the architecture refuses (ViT asserts its input size) is an
:class:`~service.core.errors.InvalidRequest` that says why, never a crash.
"""

from __future__ import annotations

import copy
import logging
import threading
from functools import lru_cache

import torch
import torchvision
from torch import nn

from service.core.errors import InvalidRequest
from service.modeling.tap import LayerCall, LayerTap

log = logging.getLogger("layertap.shapes")

MAX_SIDE = 4096
MAX_BATCH = 4096  # a large batch costs nothing on the meta device


class ShapeTracer:
    """Traces ``architecture`` on the meta device; results are cached per input size."""

    def __init__(self, architecture: str, model: nn.Module):
        self._tap = LayerTap(_meta_twin(architecture, model))
        self._lock = threading.Lock()  # a tap keeps the state of the pass in progress
        self._cached = lru_cache(maxsize=256)(self._trace)

    def trace(self, batch: int, height: int, width: int) -> tuple[LayerCall, ...]:
        """Every module call, in the order the calls return, with the shape of its output."""
        for label, value, high in (
            ("height", height, MAX_SIDE),
            ("width", width, MAX_SIDE),
            ("batch", batch, MAX_BATCH),
        ):
            if not 1 <= value <= high:
                raise InvalidRequest(f"{label} must be an integer from 1 to {high}, not {value}")
        return self._cached(batch, height, width)

    def _trace(self, batch: int, height: int, width: int) -> tuple[LayerCall, ...]:
        try:
            with self._lock, torch.inference_mode():
                return tuple(self._tap.trace(torch.empty(batch, 3, height, width, device="meta")))
        except Exception as exc:  # noqa: BLE001 - each architecture says "too small" or "wrong size" its own way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InvalidRequest(f"the model cannot take a {height}×{width} input: {reason}") from None


def _meta_twin(architecture: str, model: nn.Module) -> nn.Module:
    builder = torchvision.models.get_model_builder(architecture)
    try:
        with torch.device("meta"):
            return builder(weights=None).eval()
    except (NotImplementedError, RuntimeError) as exc:  # the constructor itself computes with tensors
        log.info("%s cannot be built on the meta device (%s); copying the model there instead", architecture, exc)
        return copy.deepcopy(model).to(device="meta", dtype=torch.float32).eval()
