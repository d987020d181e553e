"""A map laid over the image it explains, as PNG: what ``POST /explain?format=png`` returns.

The colours are the "jet" ramp (blue, cyan, yellow, red) that pytorch-grad-cam's
``show_cam_on_image`` uses through OpenCV, blended half and half with the model's input (the
resized, centre-cropped image). A class-activation map is already in [0, 1]; an attribution map
(integrated gradients, signed) is shown by magnitude, scaled to its 99th percentile so that a
few extreme pixels do not wash the rest out.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] → ``(H, W, 3)`` uint8 RGB on the jet ramp (the piecewise-linear form)."""
    x = np.clip(values, 0, 1)[..., None] * 4
    channels = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0])), 0, 1)  # red, green, blue
    return (channels * 255).round().astype(np.uint8)


def to_unit(values: np.ndarray) -> np.ndarray:
    """An attribution map → [0, 1] by magnitude, its 99th percentile as 1."""
    magnitude = np.abs(values)
    top = float(np.percentile(magnitude, 99)) or float(magnitude.max()) or 1.0
    return np.clip(magnitude / top, 0, 1)


def overlay_png(pixels: np.ndarray, heat: np.ndarray, image_weight: float = 0.5) -> bytes:
    """``(H, W, 3)`` uint8 image and an ``(H, W)`` map in [0, 1] → PNG bytes of the two blended."""
    if pixels.shape[:2] != heat.shape:
        raise ValueError(f"the map {heat.shape} must have the image's size {pixels.shape[:2]}")
    blended = image_weight * pixels.astype(np.float32) + (1 - image_weight) * jet(heat).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()
