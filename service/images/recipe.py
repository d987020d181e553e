"""What a model entry asks of its images: resize, crop, interpolation, mean and std. No torch.

The modeling layer reads it from a model entry (service/modeling/entries.py); the image layer
applies it (service/images/preprocess.py, service/images/jpeg.py, service/images/normalize.py).
It lives here, below both, so that decoding never needs to know what a model entry is.
"""

from __future__ import annotations

from dataclasses import dataclass

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
