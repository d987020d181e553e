"""Per-request reductions of captured layers: pooling and L2 normalization, aware of each layer's layout.

A ``layer4`` map is 25,088 floats per image; most embedding users want its 512-vector. Pooling
here spares them the download and the code. What "pool" reduces depends on the layer's layout
(``ModelEntry.layout_of``):

- ``nchw`` ``[N, C, H, W]`` (most CNNs): every dimension after the channels → ``[N, C]``;
- ``nhwc`` ``[N, H, W, C]`` (Swin's stages): every dimension between batch and channels → ``[N, C]``;
- ``tokens`` ``[N, T, D]`` (ViT's encoder): ``avg``/``max`` over the tokens, ``cls`` takes the
  class token (the first) → ``[N, D]``.

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


def check_pool(pool: str, layer: str, layout: str) -> None:
    """InvalidRequest unless ``pool`` applies to a layer of this layout (``cls`` needs tokens)."""
    if pool == "cls" and layout != "tokens":
        raise InvalidRequest(f"pool=cls takes the class token of a token layer; {layer!r} is laid out {layout}")


def apply(array: np.ndarray, options: OutputOptions, layout: str = "nchw") -> np.ndarray:
    """``(N, ...)`` → pooled ``(N, C)`` or ``(N, D)``; unit-norm rows when normalized; float32, contiguous."""
    if options.pool != "none" and array.ndim > 2:
        if options.pool == "cls":
            array = array[:, 0]
        else:
            axes = {"nchw": tuple(range(2, array.ndim)), "nhwc": tuple(range(1, array.ndim - 1)), "tokens": (1,)}
            reduce = np.mean if options.pool == "avg" else np.max
            array = reduce(array, axis=axes[layout])
    if options.normalize:
        flat = array.reshape(len(array), -1)
        norms = np.linalg.norm(flat, axis=1).reshape((len(array),) + (1,) * (array.ndim - 1))
        array = array / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(array, dtype=np.float32)
