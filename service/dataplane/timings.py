"""Where one request's time went, in milliseconds per stage: what every front-end's timing headers show."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Timings:
    """Milliseconds spent by one request in each stage, and how many images shared its forward pass."""

    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_images: int = 0

    def add(self, other: Timings) -> None:
        """Count ``other``'s stages too (a request whose work went to the model thread in several parts); the batch
        size is the largest either part shared."""
        self.preprocess_ms += other.preprocess_ms
        self.queue_ms += other.queue_ms
        self.inference_ms += other.inference_ms
        self.batch_images = max(self.batch_images, other.batch_images)
