"""A runner per model: it loads the model, owns its thread (through a batcher), and runs its forward passes.

Built in the caller's thread: the model with its weights (so bad weights fail ``create_app``),
its preprocessor, its layer catalogue (service/runners/catalogue.py: the layers it serves, traced
on the meta device, their layouts and roles) and, for int8, the quantized model. From
:meth:`ModelRunner.start` on, only the runner's thread touches the model: it places it on its
device, builds the batch-norm-folded twin where folding is proven safe, installs the hooks
(once), runs a warm-up pass, and then serves batches.

Requests reach the thread through :meth:`ModelRunner.extract` and :meth:`ModelRunner.explain`,
with a ticket for room in the queue and the images prepared in the request thread; the runner
wraps them into the work its thread runs. A batch captures the union of its requests' layers,
stops at the deepest one any of them needs, and gives each request back only its own rows and
layers, as float32 numpy arrays: nothing above the runner sees a tensor.

What the runner takes from its surroundings (its device, how it places the model, a hook before
each pass, the CPU's flags) comes in a :class:`~service.runners.seams.RunnerSeams`, whose
defaults are the service's behaviour.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torchvision

from service.batching.admission import Ticket
from service.batching.batcher import Batcher
from service.batching.done import Done
from service.core import hardware
from service.core.errors import NotReady, StartupError
from service.core.settings import Settings
from service.explain.explainer import Explainer, ExplainWork
from service.images.batch import Inputs, Prepared
from service.images.preprocess import ImagePreprocessor
from service.modeling.build import DTYPES, build_network, resolve_device
from service.modeling.entries import ModelEntry
from service.modeling.folding import fold_batch_norms
from service.modeling.int8 import Int8Model, build_int8, served_calls
from service.modeling.shapes import ShapeTracer
from service.modeling.tap import LayerCall, LayerTap
from service.modeling.text import TokenizedText
from service.modeling.text import stack as stack_texts
from service.modeling.weights import Weights
from service.ops import cores, metrics
from service.ops.process import release_free_heap
from service.runners.catalogue import LayerCatalogue
from service.runners.seams import ForwardChunk, RunnerSeams
from service.runners.work import TextWork, Work, answers, rows_per_text_work, rows_per_work

log = logging.getLogger("layertap.runner")

EXPLAIN = "explain"  # the batcher's kind for explain work: batched apart from inference
TEXT = "text"  # the batcher's kind for text: batched apart from images, on the same thread


class ModelRunner:
    """One model, its thread and its queue. ``start()`` loads in the background; ``ready`` says when it serves."""

    def __init__(self, settings: Settings, entry: ModelEntry, weights: Weights, seams: RunnerSeams | None = None):
        self.settings = settings
        self.entry = entry
        self.weights = weights
        self.seams = seams or RunnerSeams()
        self.name = entry.name
        self._network = build_network(entry, weights)
        # The entry as served: with the preprocessing its library gave it where it gave none.
        self.entry = entry = replace(entry, preprocessing=self._network.preprocessing)
        self.preprocess = ImagePreprocessor(
            entry.preprocessing,
            settings.max_pixels,
            settings.preprocessing,
            settings.max_aspect_ratio,
            max_decoded_bytes=settings.max_decoded_bytes,
        )
        self.device = self.seams.device or resolve_device(settings.device)
        self.cpu_flags = hardware.cpu_flags() if self.seams.cpu_flags is None else self.seams.cpu_flags
        # LAYERTAP_DTYPE=auto: the entry's own dtype where it names one, else the device's fast one
        dtype_setting = entry.dtype if settings.dtype == "auto" and entry.dtype else settings.dtype
        self.dtype = hardware.compute_dtype(dtype_setting, settings.precision, self.device.type, self.cpu_flags)
        # auto: on CUDA, unless exact preprocessing was asked for (nvjpeg is within the fast tolerances only)
        decode_on_device = settings.jpeg_decoder == "device" or (
            settings.jpeg_decoder == "auto" and self.device.type == "cuda" and settings.preprocessing == "fast"
        )
        self.inputs = Inputs(self.preprocess, self.device, decode_on_device)
        # (its share, every core): on the CPU with automatic threads, a pass takes every core while no other
        # worker has work in hand (service/ops/cores.py)
        every = self.seams.cores or hardware.available_cores()
        lends = settings.share_idle_cores and not settings.torch_threads and self.device.type == "cpu"
        self._cores = (settings.effective_torch_threads(every), every) if lends else None
        self._model = self._network.model
        self.parameters = sum(p.numel() for p in self._model.parameters())
        self._shapes = ShapeTracer(self._network, entry.source)
        self._int8: Int8Model | None = self._build_int8() if settings.precision == "int8" else None
        crop = entry.preprocessing.crop
        self.catalogue = LayerCatalogue(
            entry,
            self._shapes.trace(1, crop, crop),
            self._int8,
            output=self._network.output,
            prefix_tokens=self._network.prefix_tokens,
            grid=self._network.grid(crop, crop),
            ops=lambda: self._shapes.trace(1, crop, crop, ops=True),
        )
        self._batcher = Batcher(
            entry.name,
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000,
            max_queued=settings.max_queue_images,
            timeout_s=settings.request_timeout_s,
            admission_wait_s=settings.max_queue_wait_ms / 1000,
            batch_limits={EXPLAIN: settings.max_explain_batch},
        )
        self.text = self._network.text  # the text tower, for models that embed text (CLIP, SigLIP)
        self._explainer = Explainer(
            self._explain_model, self.layout_of, entry.preprocessing.mean, entry.preprocessing.std,
            chunk_images=settings.max_explain_batch,
        )  # fmt: skip
        self._tap: LayerTap | None = None
        self._fast_tap: LayerTap | None = None
        self._needs_original: frozenset[str] = frozenset()
        self._draining = False
        self.load_seconds: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._batcher.start(self._load)

    def close(self, timeout: float = 10.0) -> None:
        self._batcher.close(timeout)

    def drain(self) -> None:
        """Shutting down: readiness turns off so load balancers stop sending, but work is still served."""
        if self.ready:
            self._draining = True

    @property
    def state(self) -> str:
        """loading, ready, draining, failed or stopped."""
        state = self._batcher.state
        if state == "running":
            return "draining" if self._draining else "ready"
        return {"created": "loading", "starting": "loading"}.get(state, state)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failure(self) -> str | None:
        return self._batcher.failure

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.state == "loading":
            time.sleep(0.01)
        return self.ready

    # ---- the catalogue's answers, for the front-ends ----------------------------------------
    @property
    def layers(self) -> list[LayerCall]:
        """Every layer this model serves, in the order the calls return (at its crop size)."""
        return self.catalogue.layers

    @property
    def default_layer(self) -> str:
        return self.catalogue.default_layer

    @property
    def classifier(self) -> str:
        return self.catalogue.classifier

    @property
    def spatial_layers(self) -> list[str]:
        return self.catalogue.spatial_layers

    def is_spatial(self, layer: str) -> bool:
        return self.catalogue.is_spatial(layer)

    @property
    def classes(self) -> int:
        return self.catalogue.classes

    def check_layers(self, layers: tuple[str, ...]) -> None:
        """UnknownLayer (with close names) or LayerUnavailable (int8) for a name this model does not serve."""
        self.catalogue.check(layers)

    def layout_of(self, layer: str) -> str:
        """How the layer's output is laid out (nchw, nhwc or tokens), from the model entry."""
        return self.catalogue.layout_of(layer)

    def prefix_tokens(self, layer: str) -> int:
        """How many tokens (class, registers) come before the patches in a token layer's output; 0 otherwise."""
        return self.catalogue.prefix_tokens(layer)

    # ---- request side ----------------------------------------------------------------------
    def reserve(self, images: int, wait: bool = True) -> Ticket:
        """Room for ``images`` in this model's queue, waiting in line for it if ``wait`` (else Overloaded)."""
        if self.state not in ("ready", "draining"):
            raise NotReady(f"model {self.name} is {self.state}", retry_after_s=1)
        return self._batcher.reserve(images, wait)

    def extract(self, ticket: Ticket, images: tuple[Prepared, ...], layers: tuple[str, ...]) -> Done:
        """Queue the prepared images on this model's thread with the layers they want, and wait: the result is
        ``{layer: (len(images), ...) float32 array}``. The caller checks the layers first (:meth:`check_layers`,
        as the data plane does). Raises the error of the first image that failed to decode, or the batch's."""
        return ticket.submit(Work(images=images, layers=layers))

    def explain(self, ticket: Ticket, work: ExplainWork) -> Done:
        """Queue explain work on this model's thread (in batches of its own) and wait for it."""
        return ticket.submit(work, kind=EXPLAIN)

    def embed_text(self, ticket: Ticket, texts: tuple[TokenizedText, ...]) -> Done:
        """Queue tokenized texts on this model's thread (in batches of their own) and wait: the result is their
        text embeddings, ``(len(texts), dim)`` float32. Only for a model with a text tower (:attr:`text`)."""
        if self.text is None:
            raise ValueError(f"model {self.name} has no text tower; check runner.text first")
        return ticket.submit(TextWork(texts), kind=TEXT)

    def shapes(self, batch: int, height: int, width: int, ops: bool = False) -> tuple[LayerCall, ...]:
        """Every layer this model serves, for an input of this size, in the order the calls return."""
        return self.catalogue.served(self._shapes.trace(batch, height, width, ops=ops and self._int8 is None))

    def describe(self) -> dict:
        taps = (self._tap, self._fast_tap)
        return {
            "model": self.entry.name,
            "source": self.entry.source,
            "architecture": self.entry.architecture,
            "weights": self.weights.label,
            "default_layer": self.default_layer,
            "embedding": self._network.output,
            "text": None if self.text is None else {"context_length": self.text.context_length},
            "prefix_tokens": self._network.prefix_tokens,
            "spatial_layers": self.spatial_layers,
            "classifier": self.classifier,
            "labels": self.weights.categories is not None,
            "device": str(self.device),
            "dtype": self.dtype,
            "dtype_setting": self.settings.dtype,
            "cpu_flags": list(self.cpu_flags),
            "precision": self.settings.precision,
            "channels_last": self.settings.channels_last and self._int8 is None,
            "fold_batch_norm": self._fast_tap is not None,
            "preprocessing": {
                **self.entry.preprocessing.describe(),
                "mode": self.settings.preprocessing,
                "resize_kernel": self.preprocess.resize_kernel,
                "jpeg_decoder": self.inputs.jpeg_decoder,
            },
            "layers": len(self.layers),
            "parameters": self.parameters,
            "hooks": sum(tap.hook_count for tap in taps if tap is not None) if self._tap is not None else None,
            "state": self.state,
            "queue_images": self._batcher.waiting,
            "load_seconds": self.load_seconds,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }

    # ---- the model thread --------------------------------------------------------------------
    def _load(self) -> None:
        started = time.perf_counter()
        torch.set_num_threads(self.settings.effective_torch_threads())
        crop = self.entry.preprocessing.crop
        # int8 fuses batch norms itself; folding is proven on plain classifier passes (torchvision's) only
        if self.settings.fold_batch_norm and self._int8 is None and self._network.output is None:
            sample = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
            folding = fold_batch_norms(self._model, sample)
            if folding is not None:
                folded, changed = folding
                self._fast_tap = self._tap_on(self._place(folded, self.dtype))
                self._needs_original = self.catalogue.of_modules(changed)
        if self._int8 is not None:
            self._model = self._int8.model
        else:
            self._model = self._place(self._model, self.dtype)
        self._tap = self._tap_on(self._model)
        # Warm-up: the first pass allocates and picks kernels (and starts the JPEG decoder); readiness waits for it.
        warm_up = self.inputs.warm_up()
        self._forward(warm_up, frozenset({self.layers[-1].name}))
        if self._needs_original:
            self._forward(warm_up, self._needs_original)
        self.load_seconds = round(time.perf_counter() - started, 3)
        metrics.MODEL_LOAD_SECONDS.labels(self.name).set(self.load_seconds)
        release_free_heap()
        log.info(
            "model %s ready on %s (%s, weights %s) in %.2f s",
            *(self.name, self.device, self.dtype, self.weights.label, self.load_seconds),
            extra={"pid": os.getpid()},
        )

    def _run_batch(self, works: list[Work] | list[ExplainWork] | list[TextWork]) -> list:
        started = time.perf_counter()
        if self._cores is not None:
            threads = cores.threads_for_pass(*self._cores)
            if threads != torch.get_num_threads():  # this thread's own OpenMP setting: cheap to change
                torch.set_num_threads(threads)
        metrics.PASSES.labels(self.name, str(torch.get_num_threads())).inc()
        if isinstance(works[0], TextWork):
            return self._embed_texts(works, started)
        batch, failures = self.inputs.assemble([image for work in works for image in work.images])
        if isinstance(works[0], ExplainWork):
            try:
                return answers(works, failures, self._explainer.run(batch, works))
            finally:
                self._count(len(batch), started)
                del batch
                release_free_heap()  # a gradient pass leaves hundreds of MB in the allocator's free lists
        wanted = frozenset(name for work in works for name in work.layers)
        outputs = self._forward(batch, wanted)
        self._count(len(batch), started)
        return answers(works, failures, rows_per_work(works, outputs))

    def _embed_texts(self, works: list[TextWork], started: float) -> list[np.ndarray]:
        """One batch of texts through the text tower, cut back into each work's rows."""
        ids, mask = stack_texts([text for work in works for text in work.texts])
        with torch.inference_mode():
            mask = None if mask is None else mask.to(self.device)
            embeddings = self.text.encode(self._model, ids.to(self.device), mask)
            rows = embeddings.to(device="cpu", dtype=torch.float32).numpy()
        metrics.TEXTS.labels(self.name).inc(len(ids))
        metrics.INFERENCE_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return rows_per_text_work(works, rows)

    def _count(self, images: int, started: float) -> None:
        metrics.IMAGES.labels(self.name).inc(images)
        metrics.BATCH_IMAGES.labels(self.name).observe(images)
        metrics.INFERENCE_SECONDS.labels(self.name).observe(time.perf_counter() - started)

    def _explain_model(self) -> tuple[torch.nn.Module, LayerTap]:
        """The float32 model explanations run on: the served one when it is float32, else a float32 copy."""
        if self.dtype == "float32" and self._int8 is None:
            model, tap = self._model, self._tap
        else:
            model = self._place(build_network(self.entry, self.weights).model, "float32")
            tap = self._tap_on(model)
        for parameter in model.parameters():
            parameter.requires_grad_(False)  # gradients with respect to activations and inputs only
        return model, tap

    def _forward(self, batch: torch.Tensor, wanted: frozenset[str]) -> dict[str, np.ndarray]:
        """The normalized ``(n, 3, h, w)`` batch on the device → {layer: float32 array}, in chunks of max_batch_size."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        step = self.settings.max_batch_size
        tap = self._tap if self._fast_tap is None or wanted & self._needs_original else self._fast_tap
        # int8 modules carry some float names under another module's name (service/modeling/int8.py)
        calls = {name: self.catalogue.call_of(name) for name in wanted}
        with torch.inference_mode():
            for start in range(0, len(batch), step):
                chunk = self._to_input(batch[start : start + step])
                if self.seams.before_pass is not None:
                    self.seams.before_pass(ForwardChunk(self.name, tap.model, wanted, chunk))
                captured = tap.capture(chunk, frozenset(calls.values()))
                for name, call in calls.items():
                    tensor = captured[call]
                    if tensor.is_quantized:
                        tensor = tensor.dequantize()
                    parts[name].append(tensor.to(device="cpu", dtype=torch.float32).numpy())
        return {name: chunks[0] if len(chunks) == 1 else np.concatenate(chunks) for name, chunks in parts.items()}

    def _tap_on(self, model: torch.nn.Module) -> LayerTap:
        """Hooks on ``model`` (this network, or a copy of it), whose passes run as the network's do."""
        namer = (lambda: self._shapes.op_namer) if self._int8 is None else None
        return LayerTap(model, self._network.run, self._network.output, ops=namer, sites=self.catalogue.op_site)

    def _place(self, model: torch.nn.Module, dtype: str) -> torch.nn.Module:
        return self.seams.place(model, self.device, dtype, self.settings.channels_last)

    def _to_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The normalized float32 batch in the model's memory layout and dtype."""
        if not self.settings.channels_last or self._int8 is not None:
            batch = batch.contiguous()
        return batch.to(DTYPES[self.dtype])

    def _build_int8(self) -> Int8Model:
        if self.device.type != "cpu":
            raise StartupError("LAYERTAP_PRECISION=int8 runs on the CPU only; set LAYERTAP_DEVICE=cpu")
        try:
            int8 = build_int8(
                self.entry, self.weights, self.preprocess, self.settings.calibration_dir, self.settings.int8_cache_dir
            )
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        return served_calls(int8, self.entry.preprocessing.crop)
