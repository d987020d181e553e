"""The catalogue of one model's layers: which it serves, how each is laid out, and the parts some of them play.

A runner answers two kinds of question. Some need its model thread (a forward pass); the others
are about names only, asked in request threads before anything is queued: does this model serve
``layer3.1``, and if not, which names are close? is a layer a map or tokens? which layer is the
classifier, the default embedding, the last spatial map? This module answers the second kind,
from the calls traced once at load (service/modeling/shapes.py) and the model entry, so the
answers never touch the model, and its rules can be read and tested apart from the thread.

In int8 mode some float layers are fused away (service/modeling/int8.py): they are not served,
asking for one is :class:`LayerUnavailable` with what to ask for instead, and a served layer may
be computed by another module's call (:meth:`LayerCatalogue.call_of`).

Op layers (service/modeling/ops.py: ``layer1.0.add``, ``flatten``) are listed on first need (the
model's torch.fx graph is traced then): when a request names a layer that is no module's, or asks
for them (``/shapes?ops=true``), or at start for an entry that names one for a role (DenseNet's
default, ``flatten``). They play no other role, and int8 does not serve them.
"""

from __future__ import annotations

import difflib
import logging
import math
import threading
from collections.abc import Callable, Iterable

from service.core.errors import LayerUnavailable, UnknownLayer
from service.core.text import shown
from service.modeling.entries import ModelEntry
from service.modeling.int8 import Int8Model
from service.modeling.ops import OpSite
from service.modeling.roles import roles, spatial_layers
from service.modeling.tap import LayerCall

log = logging.getLogger("layertap.catalogue")


class LayerCatalogue:
    """The layers a model serves, in the order their calls return, and their roles.

    ``calls``: every call of the model at its crop size, as traced (calls that return no tensor are
    not layers). ``int8``: the quantized model's name map, when the model runs in int8. ``output``: the
    name the pass's own result is served under (the library's embedding), if any. ``prefix_tokens``:
    the class and register tokens a token layer has before its patches; ``grid``: the patch grid
    (rows, columns) of a model with patches, at its crop size (None: not such a model). ``ops``: the
    trace at the crop size with the op layers, when first needed (None: the model serves none).
    """

    def __init__(
        self,
        entry: ModelEntry,
        calls: Iterable[LayerCall],
        int8: Int8Model | None = None,
        *,
        output: str | None = None,
        prefix_tokens: int = 0,
        grid: tuple[int, int] | None = None,
        ops: Callable[[], Iterable[LayerCall]] | None = None,
    ):
        self.entry = entry
        self._trace_ops = ops
        self._ops: dict[str, LayerCall] | None = None
        self._ops_lock = threading.Lock()
        self._prefix_tokens = prefix_tokens
        self._grid = grid
        self.layers: list[LayerCall] = [
            c for c in calls if c.shape is not None and (int8 is None or c.name in int8.served)
        ]
        self._names = frozenset(c.name for c in self.layers)
        self._longest = max((len(name) for name in self._names), default=0)
        self._modules = {c.name: c.module for c in self.layers}
        self._shapes = {c.name: c.shape for c in self.layers}
        self._int8_calls = dict(int8.served) if int8 is not None else None
        self._unavailable = dict(int8.unavailable) if int8 is not None else {}
        named_op = [entry.default_layer, entry.classifier]
        if any(name and name not in self._names for name in named_op) and ops is not None and int8 is None:
            self.op_layers()  # the entry names an op layer for a role (DenseNet's default, flatten)
        self.classifier, self.default_layer = roles(entry, self.layers, output, self._ops or {})
        self.spatial_layers: list[str] = spatial_layers(self.layers, self.layout_of)
        self.classes: int = next(c.shape[-1] for c in self.layers if c.name == self.classifier)

    def __contains__(self, layer: object) -> bool:
        return layer in self._names

    def __len__(self) -> int:
        return len(self.layers)

    def op_layers(self) -> dict[str, LayerCall]:
        """The op layers at the crop size, by name (traced on first call); empty for a model that serves none,
        and in int8, which serves none (check() says so, naming float32)."""
        return {} if self._int8_calls is not None else self._traced_ops()

    def _traced_ops(self) -> dict[str, LayerCall]:
        """The float model's op layers, traced once (int8 refuses them by these names)."""
        if self._ops is None:
            with self._ops_lock:
                if self._ops is None:
                    try:
                        traced = self._trace_ops() if self._trace_ops is not None else ()
                    except Exception:
                        log.exception(
                            "model %s: its op layers could not be traced; it serves modules only", self.entry.name
                        )
                        traced = ()
                    ops = {c.name: c for c in traced if c.op is not None and c.name not in self._names}
                    self._shapes.update({name: c.shape for name, c in ops.items()})
                    self._modules.update({name: c.module for name, c in ops.items()})
                    self._ops = ops
        return self._ops

    def is_spatial(self, name: str) -> bool:
        """Whether the layer (a module's or an op's) is a map that class-activation maps can read. An element of
        an op's or a module's result (a getitem layer) is not: explanations read whole results only."""
        if name in self._names:
            return name in self.spatial_layers
        layer = self.op_layers().get(name)
        if layer is None or layer.site.item is not None or layer.site.module is not None:
            return False
        return bool(spatial_layers([layer], self.layout_of))

    def op_site(self, name: str) -> OpSite | None:
        """Where an op layer's value comes from; None for a module's layer (or a name that is neither)."""
        if name in self._names:
            return None
        layer = self.op_layers().get(name)
        return layer.site if layer is not None else None

    def check(self, layers: Iterable[str]) -> None:
        """UnknownLayer (with close names) or LayerUnavailable (int8) for a name this model does not serve."""
        for name in layers:
            if name in self._unavailable:
                raise LayerUnavailable(f"layer {shown(name)} does not exist in int8 mode: {self._unavailable[name]}")
            if name in self._names:
                continue
            if self._int8_calls is not None and name in self._traced_ops():
                raise LayerUnavailable(
                    f"layer {shown(name)} is an op layer, which int8 does not serve (its ops run inside fused "
                    "quantized kernels); ask for it with LAYERTAP_PRECISION=float32"
                )
            if name not in self.op_layers():
                known = self._names | self.op_layers().keys()
                # A name far longer than any layer's matches none: no need to compare it with each of them.
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.6) if len(name) < 2 * self._longest else []
                hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                top = [c.name for c in self.layers if "." not in c.name]
                raise UnknownLayer(
                    f"unknown layer {shown(name)} of {self.entry.name}; {hint}"
                    f"its top-level layers are {', '.join(top)}; "
                    f"the layer list has all {len(self.layers)} (containers, blocks and repeated calls included)"
                )

    def layout_of(self, layer: str) -> str:
        """How the layer's output is laid out (nchw, nhwc, tokens or other): the model entry's word, else by its
        shape: ``[N, T, D]`` is tokens; in a model with patches, a 4-D output that is not over the patch grid
        (attention's per-head ``[N, heads, T, d]``) is other, and not a map."""
        module = self._modules.get(layer, layer)
        shape = self._shapes.get(layer) or (0,) * 4
        declared = self.entry.declared_layout(module)
        if declared is None and len(shape) == 4 and self._grid is not None and tuple(shape[2:]) != self._grid:
            return "other"
        return self.entry.layout_of(module, len(shape))

    def prefix_tokens(self, layer: str) -> int:
        """How many of a token layer's tokens come before its patches (class, registers): those the model adds,
        where the layer has them (a patch embedding's output has none yet); 0 for a layer that is not tokens."""
        shape = self._shapes.get(layer)
        if shape is None or len(shape) != 3 or self.layout_of(layer) != "tokens":
            return 0
        if self._grid is None:
            return self._prefix_tokens if shape[1] > self._prefix_tokens else 0
        extra = shape[1] - self._grid[0] * self._grid[1]
        return extra if 0 <= extra <= self._prefix_tokens else 0

    def values_per_image(self, layer: str, pooled: bool) -> int:
        """How many values one image's answer holds for ``layer``: every element of its output at the crop size,
        or one per channel (``pooled``: a map's channels, a token's dimensions)."""
        shape = self._shapes[layer]
        if pooled and len(shape) > 2:
            return shape[1] if self.layout_of(layer) == "nchw" else shape[-1]
        return math.prod(shape[1:])

    def call_of(self, layer: str) -> str:
        """The call of the served model whose output is this layer's value: the layer itself, except in int8,
        where a fused group's output is captured from the group's first member (service/modeling/int8.py)."""
        return layer if self._int8_calls is None else self._int8_calls.get(layer, layer)

    def served(self, calls: Iterable[LayerCall]) -> tuple[LayerCall, ...]:
        """Those of ``calls`` (a trace at another input size) that this model serves, in their order."""
        calls = tuple(calls)
        ops = self.op_layers() if any(c.op is not None for c in calls) else {}
        return tuple(c for c in calls if c.name in self._names or c.name in ops)

    def of_modules(self, modules: Iterable[str]) -> frozenset[str]:
        """The served layers that are calls of these modules."""
        modules = set(modules)
        return frozenset(c.name for c in self.layers if c.module in modules)
