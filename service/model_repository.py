"""The model repository: which architecture to serve, with which weights and preprocessing.

Entries are TOML files in ``models/``. Reading them needs no torch, so the gunicorn master
can describe the model without importing it (torch is only imported after fork).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, center-crop ``crop``×``crop``, normalize with mean/std."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> dict:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "color": "RGB after EXIF orientation",
        }


@dataclass(frozen=True)
class ModelEntry:
    name: str
    architecture: str
    weights: str
    preprocessing: Preprocessing


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
            name=name, architecture=str(raw["architecture"]), weights=str(raw["weights"]), preprocessing=preprocessing
        )
    except KeyError as missing:
        raise ValueError(f"model entry {path} lacks the field {missing}") from None
    if preprocessing.interpolation not in INTERPOLATIONS:
        raise ValueError(f"{path}: interpolation must be one of {INTERPOLATIONS}")
    if len(preprocessing.mean) != 3 or len(preprocessing.std) != 3:
        raise ValueError(f"{path}: mean and std need three values (R, G, B)")
    if preprocessing.crop > preprocessing.resize:
        raise ValueError(f"{path}: crop ({preprocessing.crop}) cannot exceed resize ({preprocessing.resize})")
    return entry
