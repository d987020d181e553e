"""The protocol-neutral data plane: route to a model, validate, extract, explain, trace shapes, describe.

Every front-end (the layertap REST API, service/frontends/rest/routes.py, and the Open Inference Protocol,
service/frontends/oip/) parses its protocol, calls these methods and renders what they return or raise;
nothing here knows HTTP. Requests name a model (default: the
first of ``LAYERTAP_MODELS``), and each model has its own runner: its own thread, queue and
limits, so a slow model never holds up another.

An extraction reserves room in the model's queue *before* the images are decoded (refusing under
overload costs next to nothing), decodes them in the calling thread (or, for JPEGs on a CUDA
device, checks their headers there and leaves the decoding to the model thread's batched
decoder), waits for the model thread, and applies the output options (pooling, normalization) in
the calling thread again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.batching.admission import Ticket
from service.batching.done import Done
from service.core.errors import InvalidRequest, ServiceError, StartupError, TooLarge, TooManyImages, UnknownModel
from service.core.settings import Settings
from service.core.text import shown
from service.dataplane import budget, pooling
from service.dataplane.pooling import OutputOptions
from service.dataplane.text import TextEmbeddings, embed_texts
from service.dataplane.timings import Timings
from service.explain.explainer import ExplainWork, ImageExplanation
from service.explain.methods import CAM_METHODS, METHODS
from service.images.batch import Prepared
from service.images.sources import ImageInput
from service.modeling.entries import load_entry
from service.modeling.tap import LayerCall
from service.modeling.weights import PRETRAINED, HubAccess, entry_weights
from service.ops import metrics
from service.runners.runner import ModelRunner
from service.runners.seams import RunnerSeams

log = logging.getLogger("layertap.dataplane")

# One set of output options for every layer, or a set per layer (a layer left out gets the defaults).
Options = OutputOptions | Mapping[str, OutputOptions]
# While decoding, an image holds a place in its model's queue per this many bytes it decodes to (at least one):
# a 2 Mpx RGB image. 32 places then bound what request threads decode at once to about 256 MB.
DECODING_BYTES_PER_PLACE = 8_000_000


@dataclass
class Extraction:
    """One ``(n, ...)`` float32 array per requested layer, in request order."""

    model: str
    weights: str
    features: dict[str, np.ndarray]
    timings: Timings
    # Gives back the room this answer holds among the answers in flight (service/dataplane/budget.py): call it
    # once the answer is sent. A no-op unless the extraction was asked to hold room (``hold_answer``).
    release: Callable[[], None] = lambda: None


@dataclass
class ExplainResult:
    """One explanation per image, in request order, and the class names when the weights have them."""

    model: str
    weights: str
    labels: tuple[str, ...] | None
    explanations: list[ImageExplanation]
    timings: Timings


class DataPlane:
    """The models a server holds, by name; the first is the default."""

    def __init__(self, settings: Settings, runners: list[ModelRunner]):
        if not runners:
            raise ValueError("a data plane needs at least one model runner")
        self.settings = settings
        self.runners = {runner.name: runner for runner in runners}
        self.default_model = runners[0].name
        self.answers = budget.AnswersInFlight(settings.max_output_values, settings.max_queue_wait_ms / 1000)

    @classmethod
    def from_settings(cls, settings: Settings, seams: RunnerSeams | None = None) -> DataPlane:
        """Every model of ``LAYERTAP_MODELS``, with its weights; StartupError says what to change.

        ``seams`` go to every runner (service/runners/seams.py); None: the service's own behaviour.
        Nothing runs yet: :meth:`start` loads the models, each on its own thread."""
        entries = []
        for name in settings.model_names:
            try:
                entries.append(load_entry(settings.model_repository, name))
            except ValueError as exc:
                raise StartupError(str(exc)) from None
        sharing = [entry.name for entry in entries if entry.checkpoint is None]
        if len(sharing) > 1 and settings.weights not in (*PRETRAINED, "random"):
            raise StartupError(
                f"LAYERTAP_WEIGHTS={settings.weights} names one file, but {len(sharing)} of the models have no "
                f"checkpoint of their own ({', '.join(sharing)}); give each entry a checkpoint, or use imagenet or "
                "random"
            )
        hub = HubAccess(settings.allow_download, settings.hub_cache, settings.trust_remote_code)
        runners = []
        for entry in entries:
            weights = entry_weights(
                settings.weights, entry, allow_download=settings.allow_download, seed=settings.seed, hub=hub
            )
            try:
                runners.append(ModelRunner(settings, entry, weights, seams))
            except ServiceError as exc:  # its layer list could not be traced at its own input size
                raise StartupError(f"model entry {entry.name!r}: {exc.message}") from None
        return cls(settings, runners)

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for runner in self.runners.values():
            runner.start()

    def close(self, timeout: float = 10.0) -> None:
        for runner in self.runners.values():
            runner.close(timeout)

    def drain(self) -> None:
        """Shutting down: readiness turns 503 so load balancers stop sending; work in flight is still served."""
        for runner in self.runners.values():
            runner.drain()
        log.info("draining: readiness is now 503, requests in flight will finish")

    @property
    def state(self) -> str:
        """The server's state: failed if any model failed, else loading while any loads, else the models' state."""
        states = {runner.state for runner in self.runners.values()}
        for state in ("failed", "loading", "stopped", "draining"):
            if state in states:
                return state
        return "ready"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failure(self) -> str | None:
        failed = [f"{r.name}: {r.failure}" for r in self.runners.values() if r.state == "failed"]
        return "; ".join(failed) or None

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(runner.wait_ready(max(0.0, deadline - time.monotonic())) for runner in self.runners.values())

    # ---- requests ----------------------------------------------------------------------------
    def runner(self, model: str | None) -> ModelRunner:
        """The named model's runner (the default model's for None), or UnknownModel listing the others."""
        name = self.default_model if model is None else model
        try:
            return self.runners[name]
        except KeyError:
            raise UnknownModel(f"no model {shown(name)} here; models: {', '.join(self.runners)}") from None

    def check(
        self, model: str | None, layers: tuple[str, ...] | None, options: Options, images: int = 1, packed: bool = True
    ) -> tuple[ModelRunner, tuple[str, ...]]:
        """The runner and the layers (its default layer when none are named); raises on any bad name or option,
        and when ``images`` answers would be over the output budget (``packed``: the values are sent as base64
        or binary, not as JSON numbers; service/dataplane/budget.py)."""
        runner = self.runner(model)
        layers = layers or (runner.default_layer,)
        runner.check_layers(layers)
        for name in layers:
            pooling.check_pool(
                _options_for(options, name).pool, name, runner.layout_of(name), runner.prefix_tokens(name)
            )
        budget.check_answer(
            _answer_values(runner, layers, options, packed), images, self.settings.max_output_values, packed
        )
        return runner, layers

    def admit(self, model: str | None, images: int = 1, wait: bool = True) -> Ticket:
        """Room in the model's queue, held before the request's upload is read: a refusal then costs next
        to nothing. Pass the ticket to :meth:`extract`, which resizes it to the images actually sent."""
        return self.runner(model).reserve(images, wait)

    def extract(
        self,
        images: Sequence[ImageInput],
        layers: tuple[str, ...] | None = None,
        options: Options | None = None,
        model: str | None = None,
        ticket: Ticket | None = None,
        packed: bool = True,
        hold_answer: bool = False,
    ) -> Extraction:
        """Prepare ``images`` here (decode, or check the headers of JPEGs the device decodes), run them
        through the model's thread, return the requested layers, pooled or normalized as ``options`` say.
        ``packed``: as for :meth:`check`, whose output budget is applied to the images counted here.
        ``hold_answer``: hold room among the answers in flight until ``Extraction.release`` (front-ends do)."""
        options = options or OutputOptions()
        runner, layers = self.check(model, layers, options, images=max(1, len(images)), packed=packed)
        if not images:
            raise InvalidRequest("there is no image to extract features from")
        release = (
            self.answers.hold(_answer_values(runner, layers, options, packed) * len(images))
            if hold_answer
            else (lambda: None)
        )
        try:
            done, timings = _prepare_and_run(
                runner, images, ticket, lambda held, prepared: runner.extract(held, prepared, layers)
            )
            features = done.result
            for name, array in features.items():
                wanted = _options_for(options, name)
                if wanted != OutputOptions():
                    features[name] = pooling.apply(array, wanted, runner.layout_of(name), runner.prefix_tokens(name))
        except BaseException:
            release()
            raise
        return Extraction(runner.name, runner.weights.label, features, timings, release)

    @property
    def text_models(self) -> list[str]:
        """The served models that embed text (a text tower: CLIP, SigLIP)."""
        return [name for name, runner in self.runners.items() if runner.text is not None]

    def embed_text(
        self, texts: Sequence[str], model: str | None = None, truncate: bool = False, normalize: bool = False
    ) -> TextEmbeddings:
        """``texts`` through the model's text tower, into the space of its image embedding (service/dataplane/text.py),
        L2-normalized with ``normalize``. TextUnsupported for a model without one, TextTooLong for a text over its
        context length unless ``truncate``."""
        chunk = self.settings.max_images_per_request  # places each chunk holds in the queue, as that many images
        embedded = embed_texts(self.runner(model), texts, truncate, chunk, self.text_models)
        if normalize:
            embedded.vectors = pooling.apply(embedded.vectors, OutputOptions(normalize=True))
        return embedded

    def check_explain(
        self, model: str | None, method: str, layer: str | None, target: int | None, steps: int
    ) -> str | None:
        """The layer to explain at (a CAM method's default: the model's last spatial layer; None for integrated
        gradients), after checking every argument; InvalidRequest or UnknownLayer names what to change."""
        runner = self.runner(model)
        if method not in METHODS:
            raise InvalidRequest(f"method must be one of {', '.join(METHODS)}, not {method[:50]!r}")
        if self.settings.precision != "float32":
            raise InvalidRequest("explanations need float32 gradients; this server runs LAYERTAP_PRECISION=int8")
        if target is not None and not 0 <= target < runner.classes:
            raise InvalidRequest(f"target must be a class index from 0 to {runner.classes - 1}, not {target}")
        limit = self.settings.max_explain_steps
        if not 1 <= steps <= limit:  # refused for every method: an invalid value is no less so where unused
            raise InvalidRequest(f"steps must be from 1 to at most {limit} (LAYERTAP_MAX_EXPLAIN_STEPS), not {steps}")
        self._check_explain_cost(method, steps, images=1)
        if method not in CAM_METHODS:
            if layer is not None:
                raise InvalidRequest(f"{method} attributes the score to the input pixels: it takes no layer")
            return None
        if not runner.spatial_layers:
            raise InvalidRequest(
                f"{runner.name} has no layer with a spatial map for {method}; try integrated_gradients"
            )
        if layer is None:
            return runner.spatial_layers[-1]
        runner.check_layers((layer,))
        if not runner.is_spatial(layer):
            shown = ", ".join(runner.spatial_layers[-12:])
            raise InvalidRequest(
                f"{method} needs a layer with a spatial map; {layer!r} has none. {runner.name} has "
                f"{len(runner.spatial_layers)}, the last of them: {shown}"
            )
        return layer

    def explain(
        self,
        images: Sequence[ImageInput],
        method: str,
        layer: str | None,
        target: int | None = None,
        steps: int = 50,
        model: str | None = None,
        ticket: Ticket | None = None,
    ) -> ExplainResult:
        """Explain each image's score for ``target`` (default: its top-1 class) with ``method``, on the model thread
        in explain batches of its own."""
        layer = self.check_explain(model, method, layer, target, steps)
        runner = self.runner(model)
        if not images:
            raise InvalidRequest("there is no image to explain")
        if len(images) > self.settings.max_explain_batch:  # an explanation costs several forward passes
            raise TooManyImages(
                f"{len(images)} images to explain in one request; the limit is {self.settings.max_explain_batch} "
                "(LAYERTAP_MAX_EXPLAIN_BATCH)"
            )
        cost = self._check_explain_cost(method, steps, images=len(images))

        def run(held: Ticket, prepared: tuple[Prepared, ...]) -> Done:
            return runner.explain(held, ExplainWork(prepared, method, layer, target, steps, deadline=held.deadline))

        # Room by cost: an integrated-gradients request of 8 images at 256 steps is ~2,000 passes, not 8 images.
        room = min(cost, self.settings.max_queue_images)
        done, timings = _prepare_and_run(runner, images, ticket, run, room=room)
        return ExplainResult(runner.name, runner.weights.label, runner.weights.categories, done.result, timings)

    def _check_explain_cost(self, method: str, steps: int, images: int) -> int:
        """The passes ``images`` explanations cost (1 each for a CAM method, steps + 1 for integrated gradients),
        or TooLarge past LAYERTAP_MAX_EXPLAIN_PASSES."""
        passes = 1 if method in CAM_METHODS else steps + 1
        limit = self.settings.max_explain_passes
        if images * passes > limit:
            raise TooLarge(
                f"{images} image{'s' if images > 1 else ''} × {passes} passes of {method} is {images * passes:,} "
                f"forward and backward passes, over the limit of {limit:,} (LAYERTAP_MAX_EXPLAIN_PASSES); ask for "
                "fewer steps or fewer images"
            )
        return images * passes

    def shapes(
        self, model: str | None, batch: int, height: int, width: int, ops: bool = False
    ) -> tuple[ModelRunner, tuple[LayerCall, ...]]:
        """The layers a model serves at this input size, with their shapes; with ``ops``, its op layers too."""
        runner = self.runner(model)
        return runner, runner.shapes(batch, height, width, ops)

    def describe(self, model: str | None = None) -> dict:
        """The model's description, with the server's models and which is the default."""
        return {**self.runner(model).describe(), "models": list(self.runners), "default_model": self.default_model}


def _prepare_and_run(
    runner: ModelRunner,
    images: Sequence[ImageInput],
    ticket: Ticket | None,
    run: Callable[[Ticket, tuple[Prepared, ...]], Done],
    room: int | None = None,
) -> tuple[Done, Timings]:
    """Room for the images (held before anything is decoded: refusing must cost next to nothing, so a front-end
    passes the ticket it took before reading the upload), the images prepared in this thread, then ``run``.
    ``room``: what to hold instead of one place per image (work that costs more than a forward pass)."""
    started = time.perf_counter()
    room = room or len(images)
    # While they decode, images hold room by their decoded size too: 32 small files that decode to 300 MB each
    # cannot all be decoding at once. Once prepared (a crop of a few hundred kB each), they hold their count.
    decoding = sum(math.ceil(runner.inputs.decoding_bytes(data) / DECODING_BYTES_PER_PLACE) for data in images)
    decoding_room = min(max(room, decoding), runner.settings.max_queue_images)
    if ticket is None:
        ticket = runner.reserve(decoding_room)
    with ticket:
        ticket.resize(decoding_room)
        prepared = tuple(runner.inputs.prepare(data) for data in images)
        ticket.resize(room)
        preprocess_s = time.perf_counter() - started
        metrics.PREPROCESS_SECONDS.labels(runner.name).observe(preprocess_s)
        done = run(ticket, prepared)
    return done, Timings(preprocess_s * 1000, done.queue_ms, done.run_ms, done.batch_items)


def _answer_values(runner: ModelRunner, layers: tuple[str, ...], options: Options, packed: bool) -> int:
    """What one image's answer costs against the output budget (service/dataplane/budget.py)."""
    pooled = lambda name: _options_for(options, name).pool != "none"  # noqa: E731 - a predicate, named for reading
    return budget.answer_values(layers, runner.catalogue.values_per_image, pooled, packed)


def _options_for(options: Options, layer: str) -> OutputOptions:
    if isinstance(options, OutputOptions):
        return options
    return options.get(layer, OutputOptions())
