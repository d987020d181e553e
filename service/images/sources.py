"""The forms an image reaches the data plane in, without torch: front-ends build these, the runner prepares them.

- encoded ``bytes``: any format the preprocessor takes (service/images/preprocess.py);
- :class:`Pixels`: decoded RGB of any size, resized and cropped like a decoded upload;
- :class:`Tensor`: the model's input for one image, already resized, cropped and normalized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pixels:
    """A decoded RGB image, ``(height, width, 3)`` uint8, of any size: resized and cropped as uploads are."""

    array: np.ndarray


@dataclass(frozen=True)
class Tensor:
    """The model's input for one image, ``(3, crop, crop)`` float32, already resized, cropped and normalized."""

    array: np.ndarray


ImageInput = bytes | Pixels | Tensor
