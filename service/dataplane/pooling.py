"""Per-request reductions of captured layers: pooling and L2 normalization, aware of each layer's layout.

A ``layer4`` map is 25,088 floats per image; most embedding users want its 512-vector. Pooling
here spares them the download and the code. What "pool" reduces depends on the layer's layout
(``ModelEntry.layout_of``):

- ``nchw`` ``[N, C, H, W]`` (most CNNs): every dimension after the channels → ``[N, C]``;
- ``nhwc`` ``[N, H, W, C]`` (Swin's stages): every dimension between batch and channels → ``[N, C]``;
- ``tokens`` ``[N, T, D]`` (a ViT's blocks): ``cls`` takes the class token (the first), and
  ``avg``/``max`` run over the patch tokens only, after the ``prefix`` tokens the model put before
  them (its class token, DINOv2's registers) → ``[N, D]``. A layer without a class token (SigLIP,
  or a patch embedding, before the class token joins) refuses ``cls``.

``normalize=true`` then scales each image's values (all of them, pooled or not) to unit L2 norm.
Runs on the request thread, on numpy arrays, off the model thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.core.errors import InvalidRequest

POOLS = ("none", "avg", "max", "cls")


def pool_named(value: object) -> str:
    """``value`` as a pool, for every front-end: InvalidRequest naming the choices unless it is one of POOLS."""
    if value not in POOLS:
        raise InvalidRequest(f"pool must be one of {', '.join(POOLS)}, not {str(value)[:50]!r}")
    return value


@dataclass(frozen=True)
class OutputOptions:
    """How one layer is returned: pooled (``pool``, one of POOLS) and L2-normalized or not."""

    pool: str = "none"
    normalize: bool = False

    def __post_init__(self):
        pool_named(self.pool)


def check_pool(pool: str, layer: str, layout: str, prefix: int = 0) -> None:
    """InvalidRequest unless ``pool`` applies to a layer of this layout (``cls`` needs tokens, led by a class
    token: ``prefix``, the tokens before the patches, is at least 1)."""
    if pool == "cls" and layout != "tokens":
        raise InvalidRequest(f"pool=cls takes the class token of a token layer; {layer!r} is laid out {layout}")
    if pool != "none" and layout == "other":
        raise InvalidRequest(f"{layer!r} is neither a map nor tokens (attention's per-head values): ask for pool=none")
    if pool == "cls" and prefix < 1:
        raise InvalidRequest(f"pool=cls takes the class token, and {layer!r} has none: its tokens are all patches")


def apply(array: np.ndarray, options: OutputOptions, layout: str = "nchw", prefix: int = 0) -> np.ndarray:
    """``(N, ...)`` → pooled ``(N, C)`` or ``(N, D)``; unit-norm rows when normalized; float32, contiguous.
    ``prefix``: for tokens, how many come before the patches (not pooled by avg and max)."""
    if options.pool != "none" and array.ndim > 2:
        if options.pool == "cls":
            array = array[:, 0]
        else:
            if layout == "tokens":
                array = array[:, prefix:]
            axes = {"nchw": tuple(range(2, array.ndim)), "nhwc": tuple(range(1, array.ndim - 1)), "tokens": (1,)}
            reduce = np.mean if options.pool == "avg" else np.max
            array = reduce(array, axis=axes[layout])
    if options.normalize:
        flat = array.reshape(len(array), -1)
        norms = np.linalg.norm(flat, axis=1).reshape((len(array),) + (1,) * (array.ndim - 1))
        array = array / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(array, dtype=np.float32)
