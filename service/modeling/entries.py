"""The model repository: which architecture to serve, with which weights and preprocessing.

Entries are TOML files in ``models/``. Reading them needs no torch, so the gunicorn master
can describe the model without importing it (torch is only imported after fork).
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from service.images.recipe import INTERPOLATIONS, Preprocessing

# How a layer's output is laid out after the batch dimension: channels then space (most CNNs),
# space then channels (Swin's stages), or a sequence of tokens (ViT's encoder). Pooling needs it.
LAYOUTS = ("nchw", "nhwc", "tokens")


@dataclass(frozen=True)
class ModelEntry:
    """One servable model: a torchvision builder, its weights, preprocessing and per-model defaults."""

    name: str
    architecture: str
    weights: str
    preprocessing: Preprocessing
    # The embedding the family is used for, served when no layer is named, and the layer whose outputs
    # are the class scores (labels, top-5). None: inferred from the model (see ModelRunner).
    default_layer: str | None = None
    classifier: str | None = None
    layouts: tuple[tuple[str, str], ...] = ()  # (module name pattern, layout) where not "nchw"
    # This entry's own weights file (relative paths: to the entry's folder); wins over LAYERTAP_WEIGHTS.
    checkpoint: Path | None = None

    def layout_of(self, module: str) -> str:
        """The layout of a module's output: the last pattern of ``layouts`` that matches it or a module
        containing it (``fnmatch``: ``*`` matches any run of characters, dots included), else nchw."""
        parts = module.split(".")
        scopes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        layout = "nchw"
        for pattern, value in self.layouts:
            if any(fnmatch.fnmatchcase(scope, pattern) for scope in scopes):
                layout = value
        return layout


def load_entry(repository: Path, name: str) -> ModelEntry:
    """Read ``<repository>/<name>.toml``; a ValueError names the entries that do exist."""
    path = Path(repository) / f"{name}.toml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(repository).glob("*.toml"))
        raise ValueError(f"no model entry {name!r} in {repository}; available: {', '.join(available) or 'none'}")
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    try:
        pre = raw["preprocessing"]
        preprocessing = Preprocessing(
            resize=int(pre["resize"]),
            crop=int(pre["crop"]),
            interpolation=str(pre.get("interpolation", "bilinear")),
            mean=tuple(float(v) for v in pre["mean"]),
            std=tuple(float(v) for v in pre["std"]),
        )
        entry = ModelEntry(
            name=name,
            architecture=str(raw["architecture"]),
            weights=str(raw["weights"]),
            preprocessing=preprocessing,
            default_layer=raw.get("default_layer"),
            classifier=raw.get("classifier"),
            layouts=tuple((str(prefix), str(layout)) for prefix, layout in raw.get("layout", {}).items()),
            checkpoint=(path.parent / Path(raw["checkpoint"]).expanduser()) if raw.get("checkpoint") else None,
        )
    except KeyError as missing:
        raise ValueError(f"model entry {path} lacks the field {missing}") from None
    for prefix, layout in entry.layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"{path}: layout of {prefix!r} must be one of {LAYOUTS}, not {layout!r}")
    if preprocessing.interpolation not in INTERPOLATIONS:
        raise ValueError(f"{path}: interpolation must be one of {INTERPOLATIONS}")
    if len(preprocessing.mean) != 3 or len(preprocessing.std) != 3:
        raise ValueError(f"{path}: mean and std need three values (R, G, B)")
    if preprocessing.crop > preprocessing.resize:
        raise ValueError(f"{path}: crop ({preprocessing.crop}) cannot exceed resize ({preprocessing.resize})")
    return entry
