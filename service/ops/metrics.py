"""Prometheus metrics, correct with any number of gunicorn workers.

With several workers each process counts on its own; prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set up by ``service/gunicorn_conf.py`` before any worker starts)
has every process write its values to files that ``/metrics`` adds up, whichever worker answers
the scrape. Without that variable (tests, a single process) the default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client import generate_latest as _generate_latest

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "layertap_requests_total", "HTTP requests, by endpoint, method and status.", ["endpoint", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "layertap_request_duration_seconds",
    "HTTP request latency, by endpoint and status.",
    ["endpoint", "status"],
    buckets=_LATENCY_BUCKETS,
)
ERRORS = Counter("layertap_errors_total", "Error responses, by error code.", ["code"])
# Per model: each model of LAYERTAP_MODELS has its own queue and thread (bounded label values).
IMAGES = Counter("layertap_images_total", "Images that went through a model.", ["model"])
TEXTS = Counter("layertap_texts_total", "Texts that went through a model's text tower.", ["model"])
PASSES = Counter(
    "layertap_passes_total",
    "Batches run, by the torch threads they ran on (on the CPU, every core while the other workers are idle, "
    "the worker's share otherwise: service/ops/cores.py).",
    ["model", "threads"],
)
BATCH_IMAGES = Histogram(
    "layertap_batch_images", "Images per forward pass.", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
QUEUE_IMAGES = Gauge("layertap_queue_images", "Images waiting for a model.", ["model"], multiprocess_mode="livesum")
PREPROCESS_SECONDS = Histogram(
    "layertap_preprocess_seconds",
    "Request-thread preparation per request: Pillow decoding, or the header check of JPEGs decoded on the device.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_SECONDS = Histogram(
    "layertap_inference_seconds",
    "Duration of batches in the model thread: device-side JPEG decoding, if any, and forward passes.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_LOAD_SECONDS = Gauge(
    "layertap_model_load_seconds",
    "Time to load a model and run its warm-up pass.",
    ["model"],
    multiprocess_mode="max",
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type, summed over workers in multiprocess mode."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return _generate_latest(registry), CONTENT_TYPE_LATEST
    return _generate_latest(REGISTRY), CONTENT_TYPE_LATEST
