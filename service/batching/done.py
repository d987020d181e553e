"""What a request gets back from the model thread: its result, and where its time went.

Its own module so that admission (whose tickets return it) and the batcher (which makes it) do
not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Done:
    """A handled job: its result, and where its time went."""

    result: Any
    queue_ms: float
    run_ms: float
    batch_items: int
