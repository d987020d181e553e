"""The parts some layers play in a model: its classifier, its default embedding, the map explanations read.

Each is the model entry's choice where it makes one (``models/<name>.toml``), else inferred from
the model's calls, listed in the order they return (service/modeling/shapes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from service.core.errors import StartupError
from service.modeling.entries import ModelEntry
from service.modeling.tap import LayerCall

SPATIAL_LAYOUTS = ("nchw", "nhwc")


def roles(
    entry: ModelEntry, layers: list[LayerCall], output: str | None = None, ops: Mapping[str, LayerCall] | None = None
) -> tuple[str, str]:
    """The classifier and the default layer: the entry's, else inferred from the calls in return order.

    Where the pass's own result is a layer (``output``: the library's embedding), it is both: the default
    layer, and what explanations explain. Otherwise the classifier is the last top-level layer with a 2-D
    output (the class scores), and the default layer is what it reads, the call that returned just before
    the classifier's first call began. ``ops``: the op layers, for an entry that names one (DenseNet's
    ``flatten``, what its classifier reads).
    """
    ops = ops or {}
    if output is not None:
        classifier, default_layer = entry.classifier or output, entry.default_layer or output
        _check(entry, layers, classifier, default_layer, ops)
        return classifier, default_layer
    top = [c for c in layers if "." not in c.module and c.call_index == 0]
    scores = [c for c in top if len(c.shape) == 2] or top
    classifier = entry.classifier or scores[-1].name
    module = next((c.module for c in layers if c.name == classifier), classifier)
    first = next((i for i, c in enumerate(layers) if c.module == module or c.module.startswith(module + ".")), 0)
    default_layer = entry.default_layer or (layers[first - 1].name if first > 0 else classifier)
    _check(entry, layers, classifier, default_layer, ops)
    return classifier, default_layer


def _check(
    entry: ModelEntry, layers: list[LayerCall], classifier: str, default_layer: str, ops: Mapping[str, LayerCall]
) -> None:
    names = {c.name for c in layers} | set(ops)
    for role, layer in (("default_layer", default_layer), ("classifier", classifier)):
        if layer not in names:
            raise StartupError(f"model entry {entry.name!r}: its {role} {layer!r} is not one of its layers")


def spatial_layers(layers: list[LayerCall], layout_of: Callable[[str], str]) -> list[str]:
    """The calls with a map (batch, two spatial dimensions larger than 1×1, channels), in return order: what
    class-activation maps can read. The last of them is where explanations look by default.
    ``layout_of``: each layer's layout, by name."""
    spatial = []
    for call in layers:
        layout = layout_of(call.name)
        if len(call.shape) == 4 and layout in SPATIAL_LAYOUTS:
            height, width = call.shape[2:] if layout == "nchw" else call.shape[1:3]
            if height * width > 1:
                spatial.append(call.name)
    return spatial
