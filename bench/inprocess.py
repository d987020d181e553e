"""The in-process limit: decode + preprocess + batched forward with the service's own modules, no HTTP.

What the service is held to in ``make bench``. Variants of the model: ``nchw`` and
``channels_last`` are the plain model; ``service`` is what the service runs (channels_last,
batch norms folded where the layer allows); ``bfloat16`` is the service path in bfloat16, the
CPU's fast dtype where it has AMX or AVX-512 BF16; int8 is measured on ``avgpool``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INT8_CACHE = ROOT / "bench-results" / "int8-cache"


def in_process(images: list[bytes], layers: list[str], batch: int, seconds: float) -> dict:
    """img/s of decode + preprocess + forward at `batch`, per layer and model variant; single-image latency.

    Variants: `nchw` and `channels_last` are the plain model; `service` is what the service runs
    (channels_last, batch norms folded where the layer allows): the limit the service is held to.
    """
    import numpy as np
    import torch

    from service.core.hardware import available_cores
    from service.core.settings import Settings
    from service.images.preprocess import ImagePreprocessor
    from service.modeling.build import build_model, place
    from service.modeling.entries import load_entry
    from service.modeling.folding import fold_batch_norms
    from service.modeling.int8 import build_int8
    from service.modeling.tap import LayerTap
    from service.modeling.weights import resolve_weights

    settings = Settings(weights="random")
    torch.set_num_threads(available_cores())  # the pipeline on this whole machine, whatever the service's workers
    entry = load_entry(settings.model_repository, settings.model_names[0])
    preprocess = ImagePreprocessor(entry.preprocessing, settings.max_pixels, settings.preprocessing)
    mean = torch.tensor(entry.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(entry.preprocessing.std).view(1, 3, 1, 1)
    model = build_model(entry, resolve_weights("random", entry))
    folded, _ = fold_batch_norms(model, torch.randn(2, 3, 224, 224))
    folded_twin, _ = fold_batch_norms(build_model(entry, resolve_weights("random", entry)), torch.randn(2, 3, 224, 224))
    variants = {
        "nchw": (LayerTap(place(model, torch.device("cpu"), "float32", False)), False),
        "channels_last": (
            LayerTap(place(build_model(entry, resolve_weights("random", entry)), torch.device("cpu"), "float32", True)),
            True,
        ),
        "service": (LayerTap(place(folded, torch.device("cpu"), "float32", True)), True),
        "bfloat16": (LayerTap(place(folded_twin, torch.device("cpu"), "bfloat16", True)), True),
    }
    int8 = build_int8(entry, resolve_weights("random", entry), preprocess, None, INT8_CACHE)
    int8_tap = LayerTap(int8.model)

    def run(variant: str, layer: str, n: int) -> float:
        """Seconds for one batch of n images, decode to captured output."""
        tap, channels_last = variants[variant]
        started = time.perf_counter()
        pixels = np.stack([preprocess(images[i % len(images)]) for i in range(n)])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
        if not channels_last:
            x = x.contiguous()
        if variant == "bfloat16":
            x = x.to(torch.bfloat16)
        with torch.inference_mode():
            tap.capture(x, frozenset({layer}))
        return time.perf_counter() - started

    def run_int8(n: int) -> float:
        started = time.perf_counter()
        pixels = np.stack([preprocess(images[i % len(images)]) for i in range(n)])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std).contiguous()
        with torch.inference_mode():
            int8_tap.capture(x, frozenset({int8.served["avgpool"]}))
        return time.perf_counter() - started

    results: dict = {"batch": batch, "variants": {name: {} for name in variants}}
    run_int8(batch)
    done, spent = 0, 0.0
    while spent < seconds:
        spent += run_int8(batch)
        done += batch
    results["int8_avgpool"] = done / spent
    for layer in layers:
        for variant in variants:
            run(variant, layer, batch)  # warm-up
            done, spent = 0, 0.0
            while spent < seconds:
                spent += run(variant, layer, batch)
                done += batch
            results["variants"][variant][layer] = done / spent
    run("service", "avgpool", 1)
    single = sorted(run("service", "avgpool", 1) for _ in range(30))
    results["single_image_ms"] = statistics.median(single) * 1000
    for mode in ("fast", "exact"):
        one = ImagePreprocessor(entry.preprocessing, settings.max_pixels, mode)
        results[f"preprocess_{mode}_ms"] = statistics.mean(_median_ms(one, data) for data in images)
    return results


def _median_ms(preprocess, data: bytes, repeats: int = 15) -> float:
    return statistics.median(_timed(lambda: preprocess(data)) for _ in range(repeats))


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000
