"""What a model entry asks of its images: resize, crop, interpolation, mean and std. No torch.

The modeling layer reads it from a model entry or from the model's own library
(service/modeling/entries.py, service/modeling/sources/); the image layer applies it
(service/images/preprocess.py, service/images/jpeg.py, service/images/normalize.py). It lives
here, below both, so that decoding never needs to know what a model entry is.

The libraries differ in three details, and each is a field, so that ``exact`` preprocessing
equals the library's own transform:

- ``resize_mode``: ``shorter`` scales the shorter side to ``resize`` (torchvision, timm, CLIP);
  ``squash`` scales both sides to ``resize``, ignoring the aspect ratio (SigLIP);
- ``resampler``: who resizes in the library's transform: ``pillow`` (torchvision's and timm's
  transforms on PIL images, open_clip) or ``torch`` (torchvision's tensor resize, which the
  image processors of transformers use by default);
- ``crop_rounding``: the center crop's offset, ``round((new - crop) / 2)`` (torchvision) or
  ``int((new - crop) / 2)`` (transformers' image processors).
"""

from __future__ import annotations

from dataclasses import dataclass

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
RESIZE_MODES = ("shorter", "squash")
RESAMPLERS = ("pillow", "torch")
CROP_ROUNDINGS = ("round", "floor")


@dataclass(frozen=True)
class Preprocessing:
    """Resize (the shorter side, or both sides) to ``resize``, center-crop ``crop``×``crop``, normalize."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shorter"
    resampler: str = "pillow"
    crop_rounding: str = "round"

    def __post_init__(self):
        for field, value, choices in (
            ("interpolation", self.interpolation, INTERPOLATIONS),
            ("resize_mode", self.resize_mode, RESIZE_MODES),
            ("resampler", self.resampler, RESAMPLERS),
            ("crop_rounding", self.crop_rounding, CROP_ROUNDINGS),
        ):
            if value not in choices:
                raise ValueError(f"preprocessing {field} must be one of {', '.join(choices)}, not {value!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("preprocessing mean and std need three values (R, G, B)")
        if not 0 < self.crop <= self.resize:
            raise ValueError(
                f"preprocessing crop ({self.crop}) must be positive and cannot exceed resize ({self.resize})"
            )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a ``width``×``height`` image is resized to before the crop (torchvision's rule for the
        shorter side: the longer one is truncated, ``int(resize * long / short)``)."""
        if self.resize_mode == "squash":
            return self.resize, self.resize
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def crop_origin(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the center crop in a resized ``width``×``height`` image."""
        offset = (
            (lambda extra: round(extra / 2.0)) if self.crop_rounding == "round" else (lambda extra: int(extra / 2.0))
        )
        return offset(width - self.crop), offset(height - self.crop)

    def describe(self) -> dict:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize_mode": self.resize_mode,
            "resampler": self.resampler,
            "crop_rounding": self.crop_rounding,
            "color": "RGB after EXIF orientation",
        }
