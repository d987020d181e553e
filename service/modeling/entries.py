"""The model repository: which model to serve, from which library, with which weights and preprocessing.

Entries are TOML files in ``models/``. Reading them needs no torch, so the gunicorn master
can describe the model without importing it (torch is only imported after fork).

An entry's ``source`` is the library that builds it (:data:`SOURCES`; service/modeling/sources/):
``torchvision`` (the default), ``timm``, ``transformers`` or ``open_clip``. ``architecture`` and
``weights`` are that library's own names (a builder and its weights enum member; a timm model
and its pretrained tag; a Hugging Face hub id or folder, and the hub id[@revision] of its
weights; an open_clip model and its pretrained tag). ``[preprocessing]`` is optional: without
it, the library's own configuration for those weights decides.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from service.images.recipe import Preprocessing

# The libraries a model can come from, and the pip extra that installs each one's package.
SOURCES = {"torchvision": None, "timm": "timm", "transformers": "transformers", "open_clip": "open_clip"}

# How a layer's output is laid out after the batch dimension: channels then space (most CNNs),
# space then channels (Swin's stages), a sequence of tokens (a ViT's blocks), or other (attention's
# per-head [N, heads, T, d]: no map, nothing to pool). Pooling and explanations need it.
LAYOUTS = ("nchw", "nhwc", "tokens", "other")


@dataclass(frozen=True)
class ModelEntry:
    """One servable model: its library, what it builds, its weights, preprocessing and per-model defaults."""

    name: str
    architecture: str
    weights: str
    # None until the model is built: then the library's own, unless the entry gave one (ModelRunner).
    preprocessing: Preprocessing | None
    # The embedding the family is used for, served when no layer is named, and the layer whose outputs
    # are the class scores (labels, top-5). None: inferred from the model (see ModelRunner).
    default_layer: str | None = None
    classifier: str | None = None
    layouts: tuple[tuple[str, str], ...] = ()  # (module name pattern, layout) where not "nchw"
    # This entry's own weights: a state-dict file or a save_pretrained folder (relative paths: to the
    # entry's folder); wins over LAYERTAP_WEIGHTS.
    checkpoint: Path | None = None
    source: str = "torchvision"
    # The dtype this model runs in when LAYERTAP_DTYPE is auto; None: the device's fast one. float32 for a
    # model whose embedding bfloat16 moves too far (bench.models measures the cosine).
    dtype: str | None = None
    # The square input size to run a timm model at (its set_input_size resamples the position
    # embedding); None: the pretrained configuration's. Only timm can change it after loading.
    input_size: int | None = None

    def declared_layout(self, module: str) -> str | None:
        """The layout ``layouts`` gives a module's output: the last pattern that matches it or a module
        containing it (``fnmatch``: ``*`` matches any run of characters, dots included); None if none does."""
        parts = module.split(".")
        scopes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        layout = None
        for pattern, value in self.layouts:
            if any(fnmatch.fnmatchcase(scope, pattern) for scope in scopes):
                layout = value
        return layout

    def layout_of(self, module: str, ndim: int = 4) -> str:
        """The layout of a module's output of ``ndim`` dimensions: the declared one, else ``tokens`` for
        ``[N, T, D]`` (every source's convention for a sequence), else ``nchw``."""
        return self.declared_layout(module) or ("tokens" if ndim == 3 else "nchw")


def load_entry(repository: Path, name: str) -> ModelEntry:
    """Read ``<repository>/<name>.toml``; a ValueError names the entries that do exist."""
    path = Path(repository) / f"{name}.toml"
    if not path.is_file():
        available = sorted(p.stem for p in Path(repository).glob("*.toml"))
        raise ValueError(f"no model entry {name!r} in {repository}; available: {', '.join(available) or 'none'}")
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    source = str(raw.get("source", "torchvision"))
    if source not in SOURCES:
        raise ValueError(f"{path}: source must be one of {', '.join(SOURCES)}, not {source!r}")
    try:
        preprocessing = _preprocessing(raw["preprocessing"]) if "preprocessing" in raw else None
        entry = ModelEntry(
            name=name,
            architecture=str(raw["architecture"]),
            # a transformers model's weights are, unless said otherwise, those of the hub id it is built from
            weights=str(raw.get("weights", raw["architecture"] if source == "transformers" else "")),
            preprocessing=preprocessing,
            default_layer=raw.get("default_layer"),
            classifier=raw.get("classifier"),
            layouts=tuple((str(prefix), str(layout)) for prefix, layout in raw.get("layout", {}).items()),
            checkpoint=(path.parent / Path(raw["checkpoint"]).expanduser()) if raw.get("checkpoint") else None,
            source=source,
            dtype=raw.get("dtype"),
            input_size=int(raw["input_size"]) if "input_size" in raw else None,
        )
    except KeyError as missing:
        raise ValueError(f"model entry {path} lacks the field {missing}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if entry.dtype not in (None, "float32", "float16", "bfloat16"):
        raise ValueError(f"{path}: dtype must be float32, float16 or bfloat16, not {entry.dtype!r}")
    if entry.input_size is not None and (entry.source != "timm" or entry.input_size < 1):
        raise ValueError(
            f"{path}: input_size must be a positive number of pixels, and only a timm entry can take one "
            "(timm's set_input_size); for another library, its own configuration decides the input size"
        )
    for prefix, layout in entry.layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"{path}: layout of {prefix!r} must be one of {LAYOUTS}, not {layout!r}")
    return entry


def _preprocessing(pre: dict) -> Preprocessing:
    """An entry's ``[preprocessing]`` table; Preprocessing's ValueError says what is wrong."""
    return Preprocessing(
        resize=int(pre["resize"]),
        crop=int(pre["crop"]),
        interpolation=str(pre.get("interpolation", "bilinear")),
        mean=tuple(float(v) for v in pre["mean"]),
        std=tuple(float(v) for v in pre["std"]),
        resize_mode=str(pre.get("resize_mode", "shorter")),
        resampler=str(pre.get("resampler", "pillow")),
        crop_rounding=str(pre.get("crop_rounding", "round")),
    )
