"""Every layer's output shape, for any input size, from a weightless twin of the model on the meta device.

Meta tensors carry shapes and dtypes but no data, so tracing a 4096×4096 input costs nothing.
The twin is a structural copy of the real model (its modules, without copying its data), not a
fresh build: a fresh build would differ from a model built for pretrained weights that change the
network (the ViT SWAG weights' input size), and fails for a family whose constructor computes
with tensors (RegNet derives its widths from them). A size the architecture refuses (ViT asserts
its input size) is an :class:`~service.core.errors.InvalidRequest` that says why, never a crash.
"""

from __future__ import annotations

import copy
import threading
from functools import lru_cache

import torch
from torch import nn

from service.core.errors import InvalidRequest
from service.core.text import first_line
from service.modeling.network import Network
from service.modeling.ops import OpNamer
from service.modeling.tap import LayerCall, LayerTap

MAX_SIDE = 4096
MAX_BATCH = 4096  # a large batch costs nothing on the meta device


class ShapeTracer:
    """Traces a network's pass on the meta device; results are cached per input size."""

    def __init__(self, network: Network, source: str = "torchvision"):
        self._model = meta_copy(network.model)
        self._network, self._source = network, source
        self._tap = LayerTap(self._model, network.run, network.output)
        self._namer: OpNamer | None = None
        self._lock = threading.Lock()  # a tap keeps the state of the pass in progress
        self._cached = lru_cache(maxsize=256)(self._trace)

    @property
    def op_namer(self) -> OpNamer:
        """How the model's op calls are named (service/modeling/ops.py): its torch.fx graph, traced on first use."""
        with self._lock:
            if self._namer is None:
                self._namer = OpNamer(self._model, self._source)
                self._tap.remove()
                self._tap = LayerTap(self._model, self._network.run, self._network.output, ops=self._namer)
            return self._namer

    def trace(self, batch: int, height: int, width: int, ops: bool = False) -> tuple[LayerCall, ...]:
        """Every module call, in the order the calls return, with the shape of its output; with ``ops``, the op
        layers too (service/modeling/ops.py), each where its call returned."""
        for label, value, high in (
            ("height", height, MAX_SIDE),
            ("width", width, MAX_SIDE),
            ("batch", batch, MAX_BATCH),
        ):
            if not 1 <= value <= high:
                raise InvalidRequest(f"{label} must be an integer from 1 to {high}, not {value}")
        if ops:
            self.op_namer  # noqa: B018 - the namer, before the cached trace that needs it
        return self._cached(batch, height, width, ops)

    def _trace(self, batch: int, height: int, width: int, ops: bool) -> tuple[LayerCall, ...]:
        try:
            with self._lock, torch.inference_mode():
                return tuple(self._tap.trace(torch.empty(batch, 3, height, width, device="meta"), ops=ops))
        except Exception as exc:  # noqa: BLE001 - each architecture says "too small" or "wrong size" its own way
            reason = first_line(exc)
            raise InvalidRequest(f"the model cannot take a {height}×{width} input: {reason}") from None


def meta_copy(model: nn.Module) -> nn.Module:
    """``model``'s structure on the meta device: its parameters and buffers are not copied, only their shapes."""
    memo: dict[int, torch.Tensor] = {}
    for parameter in model.parameters():
        memo[id(parameter)] = nn.Parameter(torch.empty_like(parameter, device="meta"), parameter.requires_grad)
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(model, memo).to(device="meta", dtype=torch.float32).eval()
