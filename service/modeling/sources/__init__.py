"""The libraries models come from: one module each, imported only when an entry uses it.

Each module has ``build(entry, weights) -> Network`` (service/modeling/network.py): the model as its
library builds it for those weights, in eval mode, float32, on the CPU; the library's own
preprocessing for them; and the call that computes its embedding. A ResNet server never imports
timm, transformers or open_clip, so it starts no slower for their existence.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from service.core.errors import StartupError
from service.modeling.entries import SOURCES, ModelEntry

# The module that builds each source's models, the package it imports, and that package's name on PyPI.
_MODULES = {
    "torchvision": ("service.modeling.sources.torchvision_models", "torchvision", "torchvision"),
    "timm": ("service.modeling.sources.timm_models", "timm", "timm"),
    "transformers": ("service.modeling.sources.transformers_models", "transformers", "transformers"),
    "open_clip": ("service.modeling.sources.open_clip_models", "open_clip", "open_clip_torch"),
}


def installed(package: str) -> bool:
    """Whether ``package`` can be imported here, without importing it."""
    return importlib.util.find_spec(package) is not None


def source_module(entry: ModelEntry, is_installed: Callable[[str], bool] = installed):
    """The module that builds ``entry``'s models; StartupError with the ``pip install`` line when its library is
    not installed (``is_installed`` answers that; tests pass their own)."""
    module, package, distribution = _MODULES[entry.source]
    if not is_installed(package):
        raise StartupError(
            f"model entry {entry.name!r} comes from {entry.source}, which is not installed here; "
            f"run: pip install 'layertap[{SOURCES[entry.source]}]' (or pip install {distribution})"
        )
    return importlib.import_module(module)
