"""Benchmark the real service against the in-process pipeline, in one run, on this machine.

1. In-process limit: decode + preprocess + batched forward (channels_last, and NCHW for the
   record), no HTTP, with the service's own modules, for each layer.
2. The real service (gunicorn, its config file) on a loopback port, driven with the photos in
   ``models/photos/`` by N keep-alive clients for a fixed time per cell.
3. A table of img/s, p50/p99 latency, errors and the ratio to the in-process limit; RSS of the
   service at idle and at peak. Printed, and written to ``bench-results/`` as Markdown and JSON.

Ratios are what to compare across runs; absolute numbers move with the machine's other load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from service.runtime import apply_openmp_defaults, tune_malloc
from service.settings import SAMPLE_PHOTOS
from stress.load import Request, closed_loop, percentile
from stress.server import rss_mb, sample_photos, start_server

ROOT = Path(__file__).resolve().parents[1]
INT8_CACHE = ROOT / "bench-results" / "int8-cache"
TORCHSERVE_IMG_S = 28.0  # TorchServe 0.12, batch 16, 16 clients, this machine class (issue #3)


@dataclass
class Cell:
    layers: str
    query: str
    concurrency: int
    requests: int
    errors: int
    img_s: float
    p50_ms: float
    p99_ms: float
    limit_img_s: float
    ratio: float
    ratio_channels_last: float


# ---- in-process limit -------------------------------------------------------------------------
def in_process(images: list[bytes], layers: list[str], batch: int, seconds: float) -> dict:
    """img/s of decode + preprocess + forward at `batch`, per layer and model variant; single-image latency.

    Variants: `nchw` and `channels_last` are the plain model; `service` is what the service runs
    (channels_last, batch norms folded where the layer allows): the limit the service is held to.
    """
    import numpy as np
    import torch

    from service.capture import LayerTap
    from service.folding import fold_batch_norms
    from service.model import build_model, place
    from service.model_repository import load_entry
    from service.preprocess import ImagePreprocessor
    from service.quantize import build_int8
    from service.settings import Settings
    from service.weights import resolve_weights

    settings = Settings(weights="random")
    torch.set_num_threads(settings.effective_torch_threads())
    entry = load_entry(settings.model_repository, settings.model_names[0])
    preprocess = ImagePreprocessor(entry.preprocessing, settings.max_pixels, settings.preprocessing)
    mean = torch.tensor(entry.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(entry.preprocessing.std).view(1, 3, 1, 1)
    model = build_model(entry, resolve_weights("random", entry))
    folded, _ = fold_batch_norms(model, torch.randn(2, 3, 224, 224))
    variants = {
        "nchw": (LayerTap(place(model, torch.device("cpu"), "float32", False)), False),
        "channels_last": (
            LayerTap(place(build_model(entry, resolve_weights("random", entry)), torch.device("cpu"), "float32", True)),
            True,
        ),
        "service": (LayerTap(place(folded, torch.device("cpu"), "float32", True)), True),
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


# ---- the real service -------------------------------------------------------------------------
def drive(url: str, images: list[bytes], query: str, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """`concurrency` keep-alive clients POST photos for `seconds`; latencies (s) of 200s, and the error count."""
    headers = {"Content-Type": "application/octet-stream"}
    outcomes = closed_loop(
        url, lambda i: Request("POST", f"/features?{query}", images[i % len(images)], headers), concurrency, seconds
    )
    return [o.seconds for o in outcomes if o.status == 200], sum(o.status != 200 for o in outcomes)


def measure(
    url: str,
    images: list[bytes],
    layer: str,
    query: str,
    label: str,
    concurrency: int,
    seconds: float,
    limit_img_s: float,
    channels_last_img_s: float,
) -> Cell:
    """One table cell: drive `query` at `concurrency` for `seconds`, against its in-process limits."""
    latencies, errors = drive(url, images, query, concurrency, seconds)
    img_s = len(latencies) / seconds
    cell = Cell(
        layers=layer,
        query=label,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        img_s=img_s,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        limit_img_s=limit_img_s,
        ratio=img_s / limit_img_s,
        ratio_channels_last=img_s / channels_last_img_s,
    )
    print(
        f"  {label:32s} c={concurrency:<3d} {img_s:7.1f} img/s  p50 {cell.p50_ms:7.1f} ms  "
        f"p99 {cell.p99_ms:7.1f} ms  errors {errors}  ×{cell.ratio:.2f} of in-process",
        flush=True,
    )
    return cell


# ---- report ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="duration of each load cell")
    parser.add_argument("--concurrency", default="1,4,16", help="client counts, comma-separated")
    parser.add_argument("--layers", default="avgpool,layer4,layer1", help="layers to bench, one per cell")
    parser.add_argument("--extra", default="layer1:encoding=base64", help="extra cells as layer:query, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the Markdown and JSON reports")
    args = parser.parse_args()
    images = sample_photos()
    layers = args.layers.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    cells_to_run = [(layer, f"layers={layer}") for layer in layers]
    for extra in filter(None, args.extra.split(",")):
        layer, query = extra.split(":", 1)
        cells_to_run.append((layer, f"layers={layer}&{query}"))

    apply_openmp_defaults()  # the service's OpenMP and malloc tuning, for a like-for-like in-process limit
    tune_malloc()
    print(f"in-process pipeline ({len(images)} photos) ...", flush=True)
    limit = in_process(
        images, sorted(set(layers) | {c[0] for c in cells_to_run}), batch=16, seconds=min(args.seconds, 6)
    )

    env = {"LAYERTAP_WEIGHTS": os.environ.get("LAYERTAP_WEIGHTS", "random"), "LAYERTAP_LOG_LEVEL": "warning"}
    print("starting the service ...", flush=True)
    server = start_server(Path(args.out), env)
    server.wait_ready()
    try:
        pids = [server.process.pid, *server.workers()]
        drive(server.url, images, "layers=avgpool", 4, 2)  # warm-up: batch shapes, allocator
        time.sleep(1)
        idle = sum(rss_mb(pid) for pid in pids)
        cells: list[Cell] = []
        for layer, query in cells_to_run:
            for concurrency in concurrencies:
                cells.append(
                    measure(server.url, images, layer, query, query, concurrency, args.seconds,
                            limit["variants"]["service"][layer], limit["variants"]["channels_last"][layer])
                )  # fmt: skip
        peak = sum(rss_mb(pid, "VmHWM") for pid in pids)
    finally:
        server.stop()
    print("starting the int8 service ...", flush=True)
    env_int8 = {
        **env,
        "LAYERTAP_PRECISION": "int8",
        "LAYERTAP_INT8_CACHE_DIR": str(INT8_CACHE),
    }
    server = start_server(Path(args.out), env_int8)
    server.wait_ready(180)
    try:
        drive(server.url, images, "layers=avgpool", 4, 2)
        for concurrency in concurrencies:
            cells.append(
                measure(server.url, images, "avgpool", "layers=avgpool", "layers=avgpool (int8)", concurrency,
                        args.seconds, limit["int8_avgpool"], limit["variants"]["channels_last"]["avgpool"])
            )  # fmt: skip
    finally:
        server.stop()
    report(limit, cells, idle, peak, Path(args.out))


def report(limit: dict, cells: list[Cell], idle: float, peak: float, out: Path) -> None:
    lines = [
        f"# layertap benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"Machine: {os.cpu_count()} cores; torch threads per worker = cores ÷ workers. "
        f"Photos: {SAMPLE_PHOTOS}. Weights: random (speed does not depend on them).",
        "",
        "## In-process pipeline (decode + preprocess + forward at batch 16, no HTTP), img/s",
        "",
        "`service` is what the service runs: channels_last with batch norms folded where the layer allows.",
        "",
        "| layer | NCHW | channels_last | service |",
        "| --- | --- | --- | --- |",
    ]
    variants = limit["variants"]
    for layer in variants["service"]:
        lines.append(
            f"| {layer} | {variants['nchw'][layer]:.1f} | {variants['channels_last'][layer]:.1f} | "
            f"{variants['service'][layer]:.1f} |"
        )
    lines += [
        "",
        f"Single image, in process (decode + preprocess + forward, avgpool): p50 {limit['single_image_ms']:.1f} ms; "
        f"preprocess alone, mean over the photos: {limit['preprocess_fast_ms']:.2f} ms "
        f"(`LAYERTAP_PREPROCESSING=exact`: {limit['preprocess_exact_ms']:.2f} ms).",
        "",
        "## Service over loopback (gunicorn, 1 worker)",
        "",
        "| request | clients | img/s | p50 ms | p99 ms | errors | × in-process service | "
        "× in-process channels_last | × TorchServe (28 img/s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        lines.append(
            f"| `{c.query}` | {c.concurrency} | {c.img_s:.1f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.errors} | "
            f"{c.ratio:.2f} | {c.ratio_channels_last:.2f} | {c.img_s / TORCHSERVE_IMG_S:.2f} |"
        )
    by = {(c.query, c.concurrency): c for c in cells}
    lines += ["", f"RSS of the service (master + worker): idle {idle:.0f} MB, peak {peak:.0f} MB.", ""]
    checks = []
    top = max(c.concurrency for c in cells)
    if ("layers=avgpool", 1) in by:
        gap = by[("layers=avgpool", 1)].p50_ms - limit["single_image_ms"]
        checks.append(f"single-client p50 − in-process single image = {gap:+.1f} ms (target ≤ 5)")
    if ("layers=avgpool", top) in by:
        cell = by[("layers=avgpool", top)]
        checks.append(
            f"avgpool, {top} clients: ×{cell.ratio_channels_last:.2f} of in-process channels_last (target ≥ 0.9), "
            f"×{cell.ratio:.2f} of the in-process service path, "
            f"×{cell.img_s / TORCHSERVE_IMG_S:.2f} of TorchServe (target ≥ 1.5)"
        )
        for query in ("layers=layer1", "layers=layer1&encoding=base64"):
            if (query, top) in by:
                checks.append(
                    f"`{query}` ÷ avgpool throughput at {top} clients: "
                    f"×{by[(query, top)].img_s / cell.img_s:.2f} (target ≥ 2.5)"
                )
    if ("layers=avgpool (int8)", top) in by and ("layers=avgpool", top) in by:
        int8_cell, float_cell = by[("layers=avgpool (int8)", top)], by[("layers=avgpool", top)]
        checks.append(
            f"int8 avgpool, {top} clients: ×{int8_cell.img_s / float_cell.img_s:.2f} of the float32 service "
            f"(target ≥ 2), ×{int8_cell.img_s / TORCHSERVE_IMG_S:.2f} of TorchServe (target ≥ 3); "
            f"in process int8 {limit['int8_avgpool']:.0f} img/s, of which preprocessing is "
            f"{limit['preprocess_fast_ms'] * limit['int8_avgpool'] / 10:.0f}% of the time"
        )
    service = limit["variants"]["service"]
    if "layer1" in service and "avgpool" in service:
        checks.append(
            f"in process, layer1 ÷ avgpool: ×{service['layer1'] / service['avgpool']:.2f} (the early-exit gain)"
        )
    checks.append(f"idle RSS {idle:.0f} MB (target ≤ 800)")
    lines += ["## Against the targets", "", *[f"- {c}" for c in checks], ""]
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.md").write_text(text)
    (out / f"bench-{stamp}.json").write_text(
        json.dumps(
            {"in_process": limit, "cells": [asdict(c) for c in cells], "rss_idle_mb": idle, "rss_peak_mb": peak},
            indent=2,
        )
    )
    print(f"written to {out}/bench-{stamp}.md")


if __name__ == "__main__":
    main()
