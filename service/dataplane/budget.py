"""How large an answer a request may ask for: a budget of output values, checked before any work.

A 69-byte PNG asking for all 75 layers of ResNet18 is an 81 MB JSON answer; four such images in
one small multipart body are 324 MB. What a request will produce is known before its body is
read: the layers' shapes at the model's input size (every image is resized to it), pooled or
not, times the images. So the data plane checks it twice, before the upload for one image
(:meth:`DataPlane.check`) and once the images are counted, before any is decoded
(:meth:`DataPlane.extract`), and refuses with 413 what is over ``LAYERTAP_MAX_OUTPUT_VALUES``.

A request's budget bounds one answer; :class:`AnswersInFlight` bounds them together. Answers are
written after the model's queue room is given back, so without it 30 requests of 60 million values
each could be held in memory at once. A front-end holds room for its answer's values from before
the forward pass until the answer is sent (``Extraction.release``); past ``LAYERTAP_MAX_OUTPUT_VALUES``
in flight in a worker, a request waits in line for room like any other, then gets 429.

A value sent as a JSON number counts :data:`TEXT_VALUE_COST` times: written as text it takes
about 12 to 20 bytes and a Python float on the way, against 4 bytes (5⅓ in base64) packed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from service.core.errors import AnswerTooLarge, Overloaded

TEXT_VALUE_COST = 3


def answer_values(
    layers: Iterable[str], values_per_image: Callable[[str, bool], int], pooled: Callable[[str], bool], packed: bool
) -> int:
    """The cost of one image's answer: the values of every layer (``values_per_image(layer, pooled)``), each
    counted :data:`TEXT_VALUE_COST` times unless ``packed`` (base64 or binary)."""
    values = sum(values_per_image(layer, pooled(layer)) for layer in layers)
    return values if packed else values * TEXT_VALUE_COST


def check_answer(per_image: int, images: int, budget: int, packed: bool) -> None:
    """AnswerTooLarge, saying what would bring it under the budget, when ``images`` answers cost more than it."""
    total = per_image * images
    if total <= budget:
        return
    ways = ["pool=avg (one value per channel)", "fewer layers"]
    if not packed:
        ways.insert(1, f"encoding=base64 (a JSON number counts {TEXT_VALUE_COST} values)")
    if images > 1:
        ways.append("fewer images per request")
    raise AnswerTooLarge(
        f"the answer would hold {total:,} values ({images} image{'s' if images > 1 else ''} × {per_image:,}), over "
        f"the budget of {budget:,} (LAYERTAP_MAX_OUTPUT_VALUES); ask for {', '.join(ways[:-1])} or {ways[-1]}"
    )


class AnswersInFlight:
    """The values of the answers a worker is computing or writing: at most ``capacity``, waited for up to
    ``wait_s``, then Overloaded. A request never needs more than the capacity (its own budget is the same)."""

    def __init__(self, capacity: int, wait_s: float):
        self.capacity, self.wait_s = capacity, wait_s
        self.held = 0
        self._room = threading.Condition()

    def hold(self, values: int) -> Callable[[], None]:
        """Room for ``values`` (at most the capacity), or Overloaded; returns the release (safe to call twice)."""
        values = min(values, self.capacity)
        with self._room:
            if not self._room.wait_for(lambda: self.held + values <= self.capacity, self.wait_s):
                raise Overloaded(
                    f"answers of {self.held:,} values are being written (at most {self.capacity:,}, "
                    "LAYERTAP_MAX_OUTPUT_VALUES); retry shortly, or ask for pool=avg",
                    retry_after_s=1,
                )
            self.held += values
        released = False

        def release() -> None:
            nonlocal released
            with self._room:
                if not released:
                    released = True
                    self.held -= values
                    self._room.notify_all()

        return release
