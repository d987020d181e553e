"""The inference engine: one thread owns the model; request threads decode, enqueue and wait.

Request threads turn image bytes into pixels (in parallel, off the model thread), put a job on
the queue and wait on its future. The model thread takes the first job, gathers the jobs that
arrive within ``max_batch_delay_ms`` (waiting only while other requests are still being
decoded, so a lone client never waits), and runs them as one batch: the union of their layers
is captured, the forward pass stops at the deepest layer any of them needs, and each job gets
back only its own rows and its own layers. A batch that fails fails only its own jobs.

Backpressure is counted in images: when ``max_queue_images`` are already waiting, new work is
refused at once with 429. A job whose deadline passed before the model reached it is dropped
without computing it.

Outputs leave the engine as float32 numpy arrays, so the HTTP layer never sees a tensor.
"""

from __future__ import annotations

import atexit
import ctypes
import difflib
import logging
import os
import queue
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torchvision

from . import metrics, postprocess
from .capture import LayerCall, LayerTap
from .errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceFailed,
    LayerUnavailable,
    NotReady,
    Overloaded,
    ServiceError,
    StartupError,
    UnknownLayer,
)
from .folding import fold_batch_norms
from .model import DTYPES, build_model, place, resolve_device
from .model_repository import ModelEntry
from .postprocess import OutputOptions
from .preprocess import ImagePreprocessor
from .quantize import Int8Model, build_int8
from .settings import Settings
from .weights import Weights

log = logging.getLogger("layertap.engine")

MAX_SHAPES_SIDE = 4096
MAX_SHAPES_BATCH = 4096  # shapes are computed on the meta device: a large batch costs nothing


@dataclass
class Timings:
    """Milliseconds spent by one request in each stage."""

    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    batch_images: int = 0


@dataclass
class Extraction:
    """What a request gets back: one ``(n, ...)`` float32 array per requested layer, in request order."""

    features: dict[str, np.ndarray]
    timings: Timings


@dataclass
class _Job:
    pixels: np.ndarray  # (n, crop, crop, 3) uint8
    layers: tuple[str, ...]
    deadline: float
    enqueued_at: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)
    timings: Timings = field(default_factory=Timings)


_STOP = object()


class Engine:
    """Owns the model thread. ``start()`` loads the model in the background; ``ready`` says when it may serve."""

    def __init__(self, settings: Settings, entry: ModelEntry, weights: Weights):
        self.settings = settings
        self.entry = entry
        self.weights = weights
        self.preprocess = ImagePreprocessor(
            entry.preprocessing, settings.max_pixels, settings.preprocessing, settings.max_aspect_ratio
        )
        self.device = resolve_device(settings.device)
        self.dtype = settings.dtype
        # Built (and the weights checked against the architecture) in the caller's thread, so a
        # bad weights file fails create_app(); from start() on only the model thread touches it.
        self._model = build_model(entry, weights)
        self._shape_model, self._shape_tap = self._build_shape_model()
        self._shape_lock = threading.Lock()
        self._trace_shapes = lru_cache(maxsize=256)(self._trace_shapes_uncached)
        self.layers: list[LayerCall] = [
            c for c in self._trace_shapes(1, entry.preprocessing.crop, entry.preprocessing.crop) if c.shape is not None
        ]
        self._int8: Int8Model | None = None
        if settings.precision == "int8":
            self._int8 = self._build_int8()
            self.layers = [c for c in self.layers if c.name in self._int8.served]
        self._layer_names = {c.name for c in self.layers}
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting_images = 0  # admitted and not yet taken by the model thread (decoding or queued)
        self._decoding = 0  # requests being decoded: worth waiting for when forming a batch
        self._state = "created"
        self._failure: str | None = None
        self._thread: threading.Thread | None = None
        self.load_seconds: float | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._state = "loading"
        self._thread = threading.Thread(target=self._serve, name="layertap-model", daemon=True)
        self._thread.start()
        # Stop the model thread before the interpreter tears torch down under it.
        atexit.register(_close_at_exit, weakref.ref(self))

    def close(self, timeout: float = 10.0) -> None:
        """Stop the model thread after the jobs already queued; new work gets 503."""
        if self._thread is None:
            return
        self._state = "stopping"
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        self._state = "stopped"
        self._fail_queued(NotReady("the service is shutting down", headers={"Retry-After": "1"}))

    def _fail_queued(self, error: ServiceError) -> None:
        """Answer every job still queued (arrived after the stop, or left by a dead model thread)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                self._release(len(job.pixels))
                job.future.set_exception(error)

    def drain(self) -> None:
        """Shutting down: readiness turns 503 so load balancers stop sending, but work is still served."""
        if self._state == "ready":
            self._state = "draining"
            log.info("draining: readiness is now 503, requests in flight will finish")

    @property
    def state(self) -> str:
        """created, loading, ready, draining, failed, stopping or stopped."""
        return self._state

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    @property
    def failure(self) -> str | None:
        return self._failure

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._state in ("ready", "failed"):
                return self.ready
            time.sleep(0.01)
        return self.ready

    # ---- request side ----------------------------------------------------------------------
    def validate_layers(self, layers: tuple[str, ...]) -> None:
        """UnknownLayer, with a suggestion and a pointer to /shapes, for any name that is not a layer."""
        for name in layers:
            if self._int8 is not None and name in self._int8.unavailable:
                raise LayerUnavailable(f"layer {name!r} does not exist in int8 mode: {self._int8.unavailable[name]}")
            if name not in self._layer_names:
                close = difflib.get_close_matches(name, self._layer_names, n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                top = [c.name for c in self.layers if "." not in c.name]
                raise UnknownLayer(
                    f"unknown layer {name!r}; {hint}top-level layers are {', '.join(top)}; "
                    f"GET /shapes lists all {len(self.layers)} (containers, blocks and repeated calls such as "
                    f"'layer1.0.relu_1' included)"
                )

    def extract(self, images: list[bytes], layers: tuple[str, ...], options: OutputOptions | None = None) -> Extraction:
        """Decode ``images`` in this thread, run them through the model thread, return their layers.

        ``options`` (pooling, normalization) are applied here, after the model thread is done.
        """
        if self._state not in ("ready", "draining"):
            raise NotReady(
                f"the model is {self._state}; retry when GET /ready answers 200", headers={"Retry-After": "1"}
            )
        self.validate_layers(layers)
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.request_timeout_s
        self._admit(len(images))  # before decoding: refusing must cost next to nothing
        try:
            pixels = np.stack([self.preprocess(data) for data in images])
        except BaseException:
            self._release(len(images))
            with self._lock:
                self._decoding -= 1
            raise
        job = _Job(pixels=pixels, layers=layers, deadline=deadline)
        job.timings.preprocess_ms = (time.perf_counter() - started) * 1000
        metrics.PREPROCESS_SECONDS.observe(job.timings.preprocess_ms / 1000)
        self._queue.put(job)
        with self._lock:
            # Only now: the batcher waits for more work while requests are decoding, and must
            # not see "no one decoding" and an empty queue between the two steps.
            self._decoding -= 1
        try:
            features = job.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            job.future.cancel()  # if the model thread has not reached it yet, it never will
            raise DeadlineExceeded(
                f"no result within {self.settings.request_timeout_s:g} s (LAYERTAP_REQUEST_TIMEOUT_S)",
                headers={"Retry-After": "1"},
            ) from None
        except CancelledError:
            raise DeadlineExceeded("the request was cancelled before the model reached it") from None
        if options is not None and options != OutputOptions():
            features = {name: postprocess.apply(array, options) for name, array in features.items()}
        return Extraction(features=features, timings=job.timings)

    def check_capacity(self) -> None:
        """429 now if not even one more image would be admitted: lets the HTTP layer refuse before the upload."""
        if self._waiting_images >= self.settings.max_queue_images:
            raise self._overloaded()

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"{self._waiting_images} images are already waiting for the model "
            f"(LAYERTAP_MAX_QUEUE_IMAGES={self.settings.max_queue_images}); retry shortly",
            headers={"Retry-After": "1"},
        )

    def _admit(self, images: int) -> None:
        """Count ``images`` as waiting (being decoded or queued), or refuse them with 429 at once."""
        with self._lock:
            if self._waiting_images + images > self.settings.max_queue_images:
                raise self._overloaded()
            self._waiting_images += images
            self._decoding += 1
            metrics.QUEUE_IMAGES.set(self._waiting_images)

    def _release(self, images: int) -> None:
        with self._lock:
            self._waiting_images -= images
            metrics.QUEUE_IMAGES.set(self._waiting_images)

    def shapes(self, height: int, width: int, batch: int) -> tuple[LayerCall, ...]:
        """Every module call for an input of this size, in the order the calls return (no compute)."""
        for label, value, high in (
            ("height", height, MAX_SHAPES_SIDE),
            ("width", width, MAX_SHAPES_SIDE),
            ("batch", batch, MAX_SHAPES_BATCH),
        ):
            if not 1 <= value <= high:
                raise BadRequest(f"{label} must be an integer from 1 to {high}, not {value}")
        try:
            return tuple(c for c in self._trace_shapes(batch, height, width) if c.name in self._layer_names)
        except RuntimeError as exc:
            raise BadRequest(f"the model cannot take a {height}×{width} input: {str(exc).splitlines()[0]}") from None

    def describe(self) -> dict:
        return {
            "model": self.entry.name,
            "architecture": self.entry.architecture,
            "weights": self.weights.label,
            "device": str(self.device),
            "dtype": self.dtype,
            "precision": self.settings.precision,
            "channels_last": self.settings.channels_last and self._int8 is None,
            "fold_batch_norm": self.settings.fold_batch_norm and getattr(self, "_fast_tap", None) is not None,
            "torch_threads": self.settings.effective_torch_threads(),
            "preprocessing": {
                **self.entry.preprocessing.describe(),
                "mode": self.settings.preprocessing,
                "resize_kernel": self.preprocess.resize_kernel,
            },
            "layers": len(self.layers),
            "hooks": self._tap.hook_count + (self._fast_tap.hook_count if self._fast_tap else 0)
            if self.ready or self._state == "draining"
            else None,
            "threads": threading.active_count(),
            "state": self._state,
            "load_seconds": self.load_seconds,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        }

    # ---- model thread ----------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._load()
        except Exception as exc:
            self._failure = f"{type(exc).__name__}: {exc}"
            self._state = "failed"
            log.exception("model failed to load")
            return
        if self._state == "loading":
            self._state = "ready"
        batch: list = []
        try:
            while True:
                job = self._queue.get()
                if job is _STOP:
                    break
                batch = self._gather(job)
                self._run_batch(batch)
                if _STOP in batch:
                    break
        except BaseException as exc:  # the loop itself broke: no request may wait on a dead thread
            self._failure = f"model thread stopped: {type(exc).__name__}: {exc}"
            self._state = "failed"
            log.exception("model thread stopped")
            error = InferenceFailed(f"the model thread stopped ({type(exc).__name__}); the service must restart")
            for job in batch:
                if job is not _STOP and not job.future.done():
                    job.future.set_exception(error)
            self._fail_queued(error)

    def _load(self) -> None:
        started = time.perf_counter()
        torch.set_num_threads(self.settings.effective_torch_threads())
        crop = self.entry.preprocessing.crop
        self._fast_tap: LayerTap | None = None
        self._needs_original: frozenset[str] = frozenset()
        if self.settings.fold_batch_norm and self._int8 is None:  # int8 fuses batch norms itself
            sample = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
            folding = fold_batch_norms(self._model, sample)
            if folding is not None:
                folded, changed = folding
                self._fast_tap = LayerTap(place(folded, self.device, self.dtype, self.settings.channels_last))
                self._needs_original = frozenset(c.name for c in self.layers if c.module in changed)
        if self._int8 is not None:
            self._model = self._int8.model
        else:
            self._model = place(self._model, self.device, self.dtype, self.settings.channels_last)
        self._tap = LayerTap(self._model)
        shape = (1, 3, crop, crop)
        self._mean = torch.tensor(self.entry.preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.entry.preprocessing.std, device=self.device).view(1, 3, 1, 1)
        # Warm-up: the first pass allocates and picks kernels; readiness waits for it.
        warm_up = np.zeros((shape[0], crop, crop, 3), dtype=np.uint8)
        self._forward(warm_up, frozenset({self.layers[-1].name}))
        if self._needs_original:
            self._forward(warm_up, self._needs_original)
        self.load_seconds = round(time.perf_counter() - started, 3)
        metrics.MODEL_LOAD_SECONDS.set(self.load_seconds)
        _release_free_heap()
        log.info(
            "model %s ready on %s (%s, weights %s) in %.2f s",
            self.entry.name,
            self.device,
            self.dtype,
            self.weights.label,
            self.load_seconds,
            extra={"pid": os.getpid()},
        )

    def _gather(self, first: _Job) -> list:
        """The first job plus those arriving within the batch delay, while more are on their way."""
        batch = [first]
        images = len(first.pixels)
        wait_until = time.monotonic() + self.settings.max_batch_delay_ms / 1000
        while images < self.settings.max_batch_size:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or self._decoding == 0:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.0005))
                except queue.Empty:
                    continue
            batch.append(job)
            if job is _STOP:
                break
            images += len(job.pixels)
        return batch

    def _run_batch(self, batch: list) -> None:
        jobs: list[_Job] = []
        now = time.monotonic()
        for job in batch:
            if job is _STOP:
                continue
            self._release(len(job.pixels))
            if not job.future.set_running_or_notify_cancel():
                continue  # its client gave up
            if job.deadline <= now:
                job.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it waited for the model")
                )
                continue
            jobs.append(job)
        if not jobs:
            return
        started = time.perf_counter()
        wanted = frozenset(name for job in jobs for name in job.layers)
        pixels = jobs[0].pixels if len(jobs) == 1 else np.concatenate([job.pixels for job in jobs])
        try:
            outputs = self._forward(pixels, wanted)
        except Exception as exc:
            log.exception("batch of %d images failed", len(pixels))
            error = exc if isinstance(exc, ServiceError) else InferenceFailed(f"the forward pass failed: {exc}")
            for job in jobs:
                job.future.set_exception(error)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000
        metrics.IMAGES.inc(len(pixels))
        metrics.BATCH_IMAGES.observe(len(pixels))
        metrics.INFERENCE_SECONDS.observe(elapsed_ms / 1000)
        offset = 0
        for job in jobs:
            count = len(job.pixels)
            job.timings.queue_ms = (started - job.enqueued_at) * 1000
            job.timings.inference_ms = elapsed_ms
            job.timings.batch_images = len(pixels)
            job.future.set_result({name: outputs[name][offset : offset + count] for name in job.layers})
            offset += count

    def _forward(self, pixels: np.ndarray, wanted: frozenset[str]) -> dict[str, np.ndarray]:
        """uint8 NHWC pixels → {layer: float32 array}, in chunks of at most max_batch_size."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
        step = self.settings.max_batch_size
        tap = self._tap if self._fast_tap is None or wanted & self._needs_original else self._fast_tap
        # int8 modules carry some float names under another module's name (service/quantize.py)
        calls = {name: self._int8.served[name] if self._int8 else name for name in wanted}
        with torch.inference_mode():
            for start in range(0, len(pixels), step):
                captured = tap.capture(self._to_input(pixels[start : start + step]), frozenset(calls.values()))
                for name, call in calls.items():
                    tensor = captured[call]
                    if tensor.is_quantized:
                        tensor = tensor.dequantize()
                    parts[name].append(tensor.to(device="cpu", dtype=torch.float32).numpy())
        return {name: chunks[0] if len(chunks) == 1 else np.concatenate(chunks) for name, chunks in parts.items()}

    def _to_input(self, pixels: np.ndarray) -> torch.Tensor:
        """Normalize as torchvision does (x/255, then (x-mean)/std) in float32, on the model's device."""
        batch = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        # NHWC viewed as NCHW is already channels_last in memory: no copy needed for that layout.
        batch = batch.permute(0, 3, 1, 2).float().div_(255).sub_(self._mean).div_(self._std)
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
        # Keep only the names whose module really runs (a FloatFunctional such as add_relu never fires).
        crop = self.entry.preprocessing.crop
        tap = LayerTap(int8.model)
        try:
            with torch.inference_mode():
                fired = {c.name for c in tap.trace(torch.zeros(1, 3, crop, crop))}
        finally:
            tap.remove()
        served = {name: call for name, call in int8.served.items() if call in fired}
        return Int8Model(model=int8.model, served=served, unavailable=int8.unavailable)

    # ---- shapes, on a weightless twin of the model -----------------------------------------
    def _build_shape_model(self) -> tuple[torch.nn.Module, LayerTap]:
        """The same architecture on the meta device: shapes for any input size, without compute or memory."""
        builder = torchvision.models.get_model_builder(self.entry.architecture)
        with torch.device("meta"):
            model = builder(weights=None).eval()
        return model, LayerTap(model)

    def _trace_shapes_uncached(self, batch: int, height: int, width: int) -> tuple[LayerCall, ...]:
        with self._shape_lock, torch.inference_mode():
            return tuple(self._shape_tap.trace(torch.empty(batch, 3, height, width, device="meta")))


def _close_at_exit(engine_ref: weakref.ref) -> None:
    engine = engine_ref()
    if engine is not None:
        engine.close(timeout=5)


def _release_free_heap() -> None:
    """Hand the heap freed by loading and warm-up back to the OS (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
