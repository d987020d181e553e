"""The model thread's explain jobs: gradients of a class score, with respect to a layer's output or to the input.

A runner hands its explain batches here (service/runners/runner.py): they run in their own batches,
never with inference work, in grad mode, on a float32 model (the served one when it is float32,
else a float32 copy built on the first explain). Gradients come from the layer's hook in
service/modeling/tap.py, which makes the chosen call's output a leaf of the graph: the gradient is
with respect to the value that call returned, even where a later in-place op (``relu(inplace)``
after ``bn1``, ``out += identity`` after ``bn2``) rewrites it, and for one call of a module that
runs twice (``relu``, ``relu_1``). Nothing upstream of the layer keeps a graph.

Images that share a layer (CAM methods) or a step count (integrated gradients) share passes;
integrated gradients run their path points in chunks of ``chunk_images``, so memory is bounded
by the chunk, not by ``steps``. Everything a batch allocated is released when it ends.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from service.core.errors import DeadlineExceeded, InferenceFailed, ServiceError
from service.explain.maps import class_activation_map, path_inputs, quadrature, scaled_and_resized
from service.explain.methods import CAM_METHODS
from service.images.batch import Prepared
from service.images.normalize import normalize, to_pixels
from service.modeling.tap import LayerTap

log = logging.getLogger("layertap.explainer")


@dataclass(frozen=True)
class ExplainWork:
    """One explain request: its images, the method, the layer (CAM methods), the class, the path's steps, and
    the time.monotonic() past which its client no longer waits (checked between passes)."""

    images: tuple[Prepared, ...]
    method: str
    layer: str | None
    target: int | None
    steps: int
    deadline: float = float("inf")


@dataclass
class ImageExplanation:
    """One image's explanation: the class explained, its score (logit) and probability, the maps, the input."""

    target: int
    score: float
    probability: float
    map: np.ndarray  # at the layer's resolution (CAM) or the input's (integrated gradients)
    upsampled: np.ndarray | None  # CAM methods: scaled to [0, 1] and resized to the input
    pixels: np.ndarray  # the model's input as (crop, crop, 3) uint8, for overlays


class Explainer:
    """Runs explain work on the model thread; ``model`` gives the float32 model and its tap when first needed."""

    def __init__(
        self,
        model: Callable[[], tuple[torch.nn.Module, LayerTap]],
        layout_of: Callable[[str], str],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        chunk_images: int,
    ):
        self._build = model
        self._layout_of = layout_of
        self._mean = mean
        self._std = std
        self._chunk_images = chunk_images
        self._model: torch.nn.Module | None = None
        self._tap: LayerTap | None = None

    def run(self, batch: torch.Tensor, works: list[ExplainWork]) -> list[list[ImageExplanation] | ServiceError]:
        """The normalized float32 batch of every work's images, in order → each work's explanations, or the error
        that stopped its group (works that share a layer, or a step count); the other groups are unharmed."""
        offsets = list(itertools.accumulate((len(w.images) for w in works), initial=0))
        results: list[list[ImageExplanation] | ServiceError | None] = [None] * len(works)
        groups: dict[tuple, list[int]] = {}
        for index, work in enumerate(works):
            key = ("cam", work.layer) if work.method in CAM_METHODS else ("ig", work.steps)
            groups.setdefault(key, []).append(index)
        for (kind, _), members in groups.items():
            rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in members]).to(batch.device)
            inputs = batch.index_select(0, rows)
            per_image = [(works[i].target, works[i].method) for i in members for _ in works[i].images]
            deadline = min(works[i].deadline for i in members)
            try:
                if self._model is None:
                    self._model, self._tap = self._build()
                explained = []
                for start in range(0, len(inputs), self._chunk_images):  # memory: at most chunk_images at a time
                    _check(deadline)
                    chunk, chosen = (
                        inputs[start : start + self._chunk_images],
                        per_image[start : start + self._chunk_images],
                    )
                    run = self._cams if kind == "cam" else self._integrated_gradients
                    explained += run(chunk, chosen, works[members[0]], deadline)
            except ServiceError as exc:
                explained = exc
            except Exception as exc:
                log.exception("an explanation group failed")
                explained = InferenceFailed(f"the explanation failed: {type(exc).__name__}: {exc}")
            for i in members:
                if isinstance(explained, ServiceError):
                    results[i] = explained
                else:
                    results[i], explained = explained[: len(works[i].images)], explained[len(works[i].images) :]
        return results

    def _cams(self, inputs: torch.Tensor, per_image: list, work: ExplainWork, _deadline: float) -> list:
        """One pass and one backward pass for the chunk; ``_deadline`` is checked between chunks, by ``run``."""
        layer = work.layer
        with torch.enable_grad():
            logits, leaf = self._tap.capture_for_gradient(inputs, layer)
            chosen = self._targets(logits, [target for target, _ in per_image])
            scores = logits.gather(1, chosen[:, None]).squeeze(1)
            (gradients,) = torch.autograd.grad(scores.sum(), leaf, allow_unused=True)
        if gradients is None:  # the layer does not reach the class scores: nothing in it explains them
            gradients = torch.zeros_like(leaf)
        activations = leaf.detach()
        if self._layout_of(layer) == "nhwc":  # channels last (Swin's stages): the maps are over H, W
            activations, gradients = activations.permute(0, 3, 1, 2), gradients.permute(0, 3, 1, 2)
        maps = [
            class_activation_map(activations[i : i + 1], gradients[i : i + 1], method)[0]
            for i, (_, method) in enumerate(per_image)
        ]
        cams = torch.stack(maps)
        upsampled = scaled_and_resized(cams, inputs.shape[-1])
        return self._explanations(inputs, logits.detach(), chosen, cams, upsampled)

    def _integrated_gradients(self, inputs: torch.Tensor, per_image: list, work: ExplainWork, deadline: float) -> list:
        steps = work.steps
        black = torch.zeros((1, 3, 1, 1), dtype=torch.uint8)  # the baseline: a black image
        baseline = normalize(black, self._mean, self._std).to(inputs.device)
        with torch.no_grad():
            logits = self._model(inputs)
        chosen = self._targets(logits, [target for target, _ in per_image])
        alphas, weights = quadrature(steps)
        per_chunk = max(1, self._chunk_images // len(inputs))  # path points × images ≤ chunk_images per pass
        total = torch.zeros_like(inputs)
        for start in range(0, steps, per_chunk):
            _check(deadline)
            chunk_alphas, chunk_weights = alphas[start : start + per_chunk], weights[start : start + per_chunk]
            with torch.enable_grad():
                points = path_inputs(inputs, baseline, chunk_alphas).requires_grad_(True)
                scores = self._model(points).gather(1, chosen.repeat(len(chunk_alphas))[:, None])
                (gradients,) = torch.autograd.grad(scores.sum(), points)
            scale = torch.tensor(chunk_weights, device=inputs.device).view(-1, 1, 1, 1, 1)
            total += (gradients.view(len(chunk_alphas), *inputs.shape) * scale).sum(dim=0)
        attributions = total * (inputs - baseline)
        return self._explanations(inputs, logits, chosen, attributions.sum(dim=1), None)

    def _targets(self, logits: torch.Tensor, targets: list[int | None]) -> torch.Tensor:
        top = logits.detach().argmax(dim=1)
        given = [top[i].item() if t is None else t for i, t in enumerate(targets)]
        return torch.tensor(given, device=logits.device)

    def _explanations(self, inputs, logits, chosen, maps, upsampled) -> list[ImageExplanation]:
        probabilities = logits.float().softmax(dim=1).gather(1, chosen[:, None]).squeeze(1)
        scores = logits.float().gather(1, chosen[:, None]).squeeze(1)
        pixels = to_pixels(inputs.detach().cpu(), self._mean, self._std)
        maps = maps.detach().float().cpu().numpy()
        upsampled = None if upsampled is None else upsampled.detach().float().cpu().numpy()
        return [
            ImageExplanation(
                target=int(chosen[i]),
                score=float(scores[i]),
                probability=float(probabilities[i]),
                map=np.ascontiguousarray(maps[i]),
                upsampled=None if upsampled is None else np.ascontiguousarray(upsampled[i]),
                pixels=pixels[i].permute(1, 2, 0).contiguous().numpy(),
            )
            for i in range(len(inputs))
        ]


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise DeadlineExceeded("the explanation did not finish within the request's deadline", retry_after_s=1)
