"""What a request hands a model thread, and how a batch's results go back to each request.

The batcher gathers the work of several requests into one batch; the model thread runs their
images as one block of rows, in order. These helpers cut that block back into each request's
rows, and give a request whose image failed to decode its error rather than its rows, without
failing its neighbours in the batch. They know nothing of models, so they are tested on their own.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.errors import ServiceError
from service.images.batch import Prepared
from service.modeling.text import TokenizedText


@dataclass(frozen=True)
class Work:
    """What one extraction hands the model thread: the layers it wants, and per image its pixels
    (``(crop, crop, 3)`` uint8, decoded in the request thread), a JPEG to decode on the device, or
    the client's own normalized tensor."""

    images: tuple[Prepared, ...]
    layers: tuple[str, ...]


@dataclass(frozen=True)
class TextWork:
    """What one text embedding hands the model thread: its texts, tokenized in the request thread."""

    texts: tuple[TokenizedText, ...]


def rows_per_work(works: Sequence[Work], outputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The batch's ``{layer: rows}`` → for each work, its own rows of only its own layers."""
    offset, per_work = 0, []
    for work in works:
        per_work.append({name: outputs[name][offset : offset + len(work.images)] for name in work.layers})
        offset += len(work.images)
    return per_work


def rows_per_text_work(works: Sequence[TextWork], rows: np.ndarray) -> list[np.ndarray]:
    """The batch's text embeddings, ``(n, dim)`` → each work's own rows, in order."""
    offsets = np.cumsum([0, *(len(work.texts) for work in works)])
    return [rows[start:end] for start, end in itertools.pairwise(offsets)]


def answers(works: Sequence[Any], failures: dict[int, ServiceError], results: Sequence[Any]) -> list:
    """Each work's result, or the error of its first image that failed to decode (``failures`` is by row of
    the batch); the other works are unharmed."""
    offset, answered = 0, []
    for work, result in zip(works, results, strict=True):
        failed = [failures[i] for i in range(offset, offset + len(work.images)) if i in failures]
        answered.append(failed[0] if failed else result)
        offset += len(work.images)
    return answered
