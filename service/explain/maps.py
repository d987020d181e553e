"""Explanations from gradients: the Grad-CAM family on a layer's map, integrated gradients on the input.

Pure tensor arithmetic, no model and no HTTP: service/explain/explainer.py runs the passes on the model
thread and hands these functions the activations and gradients.

Class-activation maps, for activations ``A`` and gradients ``G = d score / d A`` of shape
``(N, C, H, W)``, as the papers define them and pytorch-grad-cam computes them:

- ``gradcam``: channel weights ``mean_hw(G)``, map ``relu(sum_c w_c A_c)``;
- ``gradcam++``: weights ``sum_hw(relu(G) * a)`` with ``a = G² / (2G² + sum_hw(A)·G³)`` (0 where
  ``G`` is 0), map as Grad-CAM's;
- ``layercam``: map ``relu(sum_c relu(G) * A)``;
- ``hirescam``: map ``relu(sum_c G * A)``.

Each map is returned at the layer's resolution, and min-max scaled to [0, 1] then resized
bilinearly (half-pixel centres, as OpenCV's ``resize``) to the model's input.

Integrated gradients (Sundararajan et al., 2017) attribute the score to the input pixels: the
gradient averaged along the straight path from a baseline to the input, times ``input -
baseline``. The average is taken with Gauss-Legendre quadrature over ``steps`` points, Captum's
default, so that the same ``steps`` give the same numbers as Captum. The map is the attribution
summed over the colour channels, at the input's resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from service.explain.methods import CAM_METHODS


def class_activation_map(activations: torch.Tensor, gradients: torch.Tensor, method: str) -> torch.Tensor:
    """``(N, C, H, W)`` activations and their gradients → ``(N, H, W)`` map (ReLU'd, not scaled)."""
    if method not in CAM_METHODS:
        raise ValueError(f"method must be one of {', '.join(CAM_METHODS)}, not {method!r}")
    a, g = activations.float(), gradients.float()
    if method == "gradcam":
        cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1)
    elif method == "gradcam++":
        g2 = g * g
        g3 = g2 * g
        denominator = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6
        alpha = torch.where(g != 0, g2 / denominator, torch.zeros_like(g))
        weights = (g.clamp(min=0) * alpha).sum(dim=(2, 3), keepdim=True)
        cam = (weights * a).sum(dim=1)
    elif method == "layercam":
        cam = (g.clamp(min=0) * a).sum(dim=1)
    else:  # hirescam
        cam = (g * a).sum(dim=1)
    return cam.clamp(min=0)


def scaled_and_resized(cam: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, h, w)`` → each map min-max scaled to [0, 1], then bilinearly resized to ``(N, size, size)``."""
    flat = cam.reshape(len(cam), -1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    shifted = cam - low
    high = shifted.reshape(len(cam), -1).max(dim=1).values.view(-1, 1, 1)
    scaled = shifted / (high + 1e-7)
    resized = F.interpolate(scaled.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    return resized.squeeze(1)


def quadrature(steps: int) -> tuple[list[float], list[float]]:
    """Gauss-Legendre points on [0, 1] and their weights, ``steps`` of each (Captum's default rule)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    points, weights = np.polynomial.legendre.leggauss(steps)
    return (0.5 * (1 + points)).tolist(), (0.5 * weights).tolist()


def path_inputs(inputs: torch.Tensor, baseline: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    """The points ``baseline + alpha (inputs - baseline)`` for every alpha, alpha-major: ``(len(alphas) * N, ...)``."""
    return torch.cat([baseline + alpha * (inputs - baseline) for alpha in alphas])
