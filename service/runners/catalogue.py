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
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from service.core.errors import LayerUnavailable, UnknownLayer
from service.modeling.entries import ModelEntry
from service.modeling.int8 import Int8Model
from service.modeling.roles import roles, spatial_layers
from service.modeling.tap import LayerCall


class LayerCatalogue:
    """The layers a model serves, in the order their calls return, and their roles.

    ``calls``: every call of the model at its crop size, as traced (calls that return no tensor are
    not layers). ``int8``: the quantized model's name map, when the model runs in int8.
    """

    def __init__(self, entry: ModelEntry, calls: Iterable[LayerCall], int8: Int8Model | None = None):
        self.entry = entry
        self.layers: list[LayerCall] = [
            c for c in calls if c.shape is not None and (int8 is None or c.name in int8.served)
        ]
        self._names = frozenset(c.name for c in self.layers)
        self._modules = {c.name: c.module for c in self.layers}
        self._int8_calls = dict(int8.served) if int8 is not None else None
        self._unavailable = dict(int8.unavailable) if int8 is not None else {}
        self.classifier, self.default_layer = roles(entry, self.layers)
        self.spatial_layers: list[str] = spatial_layers(entry, self.layers)
        self.classes: int = next(c.shape[-1] for c in self.layers if c.name == self.classifier)

    def __contains__(self, layer: object) -> bool:
        return layer in self._names

    def __len__(self) -> int:
        return len(self.layers)

    def check(self, layers: Iterable[str]) -> None:
        """UnknownLayer (with close names) or LayerUnavailable (int8) for a name this model does not serve."""
        for name in layers:
            if name in self._unavailable:
                raise LayerUnavailable(f"layer {name!r} does not exist in int8 mode: {self._unavailable[name]}")
            if name not in self._names:
                close = difflib.get_close_matches(name, self._names, n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                top = [c.name for c in self.layers if "." not in c.name]
                raise UnknownLayer(
                    f"unknown layer {name!r} of {self.entry.name}; {hint}its top-level layers are {', '.join(top)}; "
                    f"the layer list has all {len(self.layers)} (containers, blocks and repeated calls included)"
                )

    def layout_of(self, layer: str) -> str:
        """How the layer's output is laid out (nchw, nhwc or tokens), from the model entry."""
        return self.entry.layout_of(self._modules.get(layer, layer))

    def call_of(self, layer: str) -> str:
        """The call of the served model whose output is this layer's value: the layer itself, except in int8,
        where a fused group's output is captured from the group's first member (service/modeling/int8.py)."""
        return layer if self._int8_calls is None else self._int8_calls[layer]

    def served(self, calls: Iterable[LayerCall]) -> tuple[LayerCall, ...]:
        """Those of ``calls`` (a trace at another input size) that this model serves, in their order."""
        return tuple(c for c in calls if c.name in self._names)

    def of_modules(self, modules: Iterable[str]) -> frozenset[str]:
        """The served layers that are calls of these modules."""
        modules = set(modules)
        return frozenset(c.name for c in self.layers if c.module in modules)
