"""Text through a model's text tower: tokenized in the calling thread, embedded on the model's thread.

The data plane's counterpart of an extraction, for the models that embed text into the space of
their image embedding (CLIP, SigLIP: service/modeling/text.py). Every text is tokenized first, so a
text over the tower's context length is refused (:class:`TextTooLong`) before any room is taken.
The texts then go to the model's thread in chunks of at most ``chunk`` (each holding that many
places in its queue, as images do), where they are batched with other requests' texts and never
with images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.core.errors import InvalidRequest, TextTooLong, TextUnsupported
from service.core.text import listed
from service.dataplane.timings import Timings
from service.modeling.text import TooManyTokens
from service.runners.runner import ModelRunner


@dataclass
class TextEmbeddings:
    """One embedding per text, ``(n, dim)`` float32, unnormalized, in order; the tokens each text became; where the
    time went (tokenizing counts as preprocessing)."""

    model: str
    weights: str
    vectors: np.ndarray
    tokens: list[int]
    timings: Timings


def embed_texts(
    runner: ModelRunner, texts: Sequence[str], truncate: bool, chunk: int, text_models: Sequence[str]
) -> TextEmbeddings:
    """``texts`` through ``runner``'s text tower; ``text_models``: the served models that take text, for the error
    a model without a tower answers with."""
    if runner.text is None:
        raise TextUnsupported(
            f"model {runner.name} has no text tower: it embeds images only; "
            + (f"models that take text here: {listed(text_models)}" if text_models else "no model here takes text")
        )
    if not texts:
        raise InvalidRequest("there is no text to embed")
    started = time.perf_counter()
    tokenized = []
    for index, text in enumerate(texts):
        try:
            tokenized.append(runner.text.tokenize(text, truncate))
        except TooManyTokens as exc:
            raise TextTooLong(
                f"text {index} is {exc.tokens} tokens, over the {exc.limit} that model {runner.name}'s text tower takes"
            ) from None
    timings = Timings(preprocess_ms=(time.perf_counter() - started) * 1000)
    vectors = []
    for start in range(0, len(tokenized), chunk):
        part = tuple(tokenized[start : start + chunk])
        with runner.reserve(len(part)) as ticket:
            done = runner.embed_text(ticket, part)
        vectors.append(done.result)
        timings.add(Timings(queue_ms=done.queue_ms, inference_ms=done.run_ms, batch_images=done.batch_items))
    return TextEmbeddings(
        runner.name, runner.weights.label, np.concatenate(vectors), [text.tokens for text in tokenized], timings
    )
