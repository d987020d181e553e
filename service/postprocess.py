"""Per-request reductions of captured layers: spatial pooling and L2 normalization.

A ``layer4`` map is 25,088 floats per image; most embedding users want its 512-vector. Pooling
here (``pool=avg|max`` over every dimension after the channel one) and normalizing
(``normalize=true``: unit L2 norm per image, over all non-batch values) spares them the
download and the code. Runs on the request thread, on numpy arrays, off the model thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POOLS = ("none", "avg", "max")


@dataclass(frozen=True)
class OutputOptions:
    pool: str = "none"
    normalize: bool = False

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {self.pool!r}")


def apply(array: np.ndarray, options: OutputOptions) -> np.ndarray:
    """``(N, C, ...)`` → ``(N, C)`` when pooled; unit-norm rows when normalized; float32 and contiguous."""
    if options.pool != "none" and array.ndim > 2:
        axes = tuple(range(2, array.ndim))
        array = array.mean(axis=axes) if options.pool == "avg" else array.max(axis=axes)
    if options.normalize:
        flat = array.reshape(len(array), -1)
        norms = np.linalg.norm(flat, axis=1).reshape((len(array),) + (1,) * (array.ndim - 1))
        array = array / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(array, dtype=np.float32)
