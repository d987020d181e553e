"""Every layer's output shape, for any input size, from a weightless twin of the model on the meta device.

Meta tensors carry shapes and dtypes but no data, so tracing a 4096×4096 input costs nothing.
The twin is built on the meta device directly. It is copied from the real model instead (its
structure, without copying its data) where a fresh build would differ or fail: a model built
for pretrained weights that change the network (``copy=True``: the ViT SWAG weights' input size),
and a family whose constructor computes with tensors (RegNet derives its widths from them). A
size the architecture refuses (ViT asserts its input size) is an
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
    """Traces ``architecture`` on the meta device; results are cached per input size.

    ``copy``: trace a structural copy of ``model`` rather than a fresh ``builder(weights=None)``, for a model
    whose configuration is not the builder's default."""

    def __init__(self, architecture: str, model: nn.Module, copy: bool = False):
        self._tap = LayerTap(meta_copy(model) if copy else _meta_twin(architecture, model))
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
        return meta_copy(model)


def meta_copy(model: nn.Module) -> nn.Module:
    """``model``'s structure on the meta device: its parameters and buffers are not copied, only their shapes."""
    memo: dict[int, torch.Tensor] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(torch.empty_like(parameter, device="meta"), parameter.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo).to(device="meta", dtype=torch.float32).eval()
