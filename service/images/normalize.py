"""Pixels → a model's input, and back: torchvision's normalization, written once.

torchvision's transforms turn uint8 pixels into a model's input as ``x / 255``, then ``(x - mean) / std``
per channel, in float32. Three places need exactly that: the batch the model thread assembles
(service/images/batch.py), int8 calibration (service/modeling/int8.py) and the explainer, whose
integrated gradients start from a black image and whose overlays turn the input back into pixels
(service/explain/explainer.py). They share this module so that they cannot drift apart by one
rounding: golden tests compare the service with torchvision's own transforms, to the bit.

The mean and std become tensors once per device (the first call on a CUDA device makes them there,
in the thread that calls, which for a runner is its model thread).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

LAYOUTS = ("nchw", "nhwc")


def normalize(
    pixels: torch.Tensor | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    layout: str = "nchw",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 pixels, ``(n, 3, h, w)`` (``layout="nchw"``) or ``(n, h, w, 3)`` (``"nhwc"``) → the normalized
    ``(n, 3, h, w)`` batch, computed in float32 and returned in ``dtype``.

    ``device``: where to compute (the pixels travel there as uint8, a quarter of float32's bytes);
    None leaves them where they are. NHWC input is only viewed as NCHW, so the result is
    channels_last in memory; call ``.contiguous()`` where a model needs NCHW memory.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    tensor = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels
    if layout == "nhwc" and tensor.ndim == 4:
        tensor = tensor.permute(0, 3, 1, 2)
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"pixels must be uint8 with 3 channels in {layout}, not {tensor.dtype} {list(tensor.shape)}")
    if device is not None:
        tensor = tensor.to(device)
    mean_, std_ = _channel_constants(tuple(mean), tuple(std), tensor.device)
    batch = tensor.float().div_(255).sub_(mean_).div_(std_)  # in place: one float copy
    return batch if dtype == torch.float32 else batch.to(dtype)


def to_pixels(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """The inverse, for display: a normalized ``(n, 3, h, w)`` batch → uint8 ``(n, 3, h, w)`` pixels,
    rounded, and clamped where the input was outside the pixel range (a client's own tensor)."""
    mean_, std_ = _channel_constants(tuple(mean), tuple(std), batch.device)
    return (batch * std_ + mean_).clamp(0, 1).mul(255).round().to(torch.uint8)


@functools.cache
def _channel_constants(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std as float32 ``(1, 3, 1, 1)`` tensors on ``device``, made once (as ordinary tensors, even
    when first asked for under inference mode, so that gradient passes may use them too)."""
    with torch.inference_mode(False):
        return (
            torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device),
            torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device),
        )
