"""The parts some layers play in a model: its classifier, its default embedding, the map explanations read.

Each is the model entry's choice where it makes one (``models/<name>.toml``), else inferred from
the model's calls, listed in the order they return (service/modeling/shapes.py).
"""

from __future__ import annotations

from service.core.errors import StartupError
from service.modeling.entries import ModelEntry
from service.modeling.tap import LayerCall

SPATIAL_LAYOUTS = ("nchw", "nhwc")


def roles(entry: ModelEntry, layers: list[LayerCall]) -> tuple[str, str]:
    """The classifier and the default layer: the entry's, else inferred from the calls in return order.

    The classifier is the last top-level layer with a 2-D output (the class scores); the default
    layer is what it reads, the call that returned just before the classifier's first call began.
    """
    top = [c for c in layers if "." not in c.module and c.call_index == 0]
    scores = [c for c in top if len(c.shape) == 2] or top
    classifier = entry.classifier or scores[-1].name
    module = next((c.module for c in layers if c.name == classifier), classifier)
    first = next((i for i, c in enumerate(layers) if c.module == module or c.module.startswith(module + ".")), 0)
    default_layer = entry.default_layer or (layers[first - 1].name if first > 0 else classifier)
    names = {c.name for c in layers}
    for role, layer in (("default_layer", default_layer), ("classifier", classifier)):
        if layer not in names:
            raise StartupError(f"model entry {entry.name!r}: its {role} {layer!r} is not one of its layers")
    return classifier, default_layer


def spatial_layers(entry: ModelEntry, layers: list[LayerCall]) -> list[str]:
    """The calls with a map (batch, two spatial dimensions larger than 1×1, channels), in return order: what
    class-activation maps can read. The last of them is where explanations look by default."""
    spatial = []
    for call in layers:
        layout = entry.layout_of(call.module)
        if len(call.shape) == 4 and layout in SPATIAL_LAYOUTS:
            height, width = call.shape[2:] if layout == "nchw" else call.shape[1:3]
            if height * width > 1:
                spatial.append(call.name)
    return spatial
