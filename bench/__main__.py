"""Benchmark the real service against the in-process pipeline, in one run, on this machine.

1. In-process limit (bench/inprocess.py): decode + preprocess + batched forward, no HTTP, with
   the service's own modules, for each layer, in float32, bfloat16 and int8.
2. The real service (gunicorn, its config file, default settings) on a loopback port, driven with
   the photos in ``models/photos/`` by N keep-alive clients for a fixed time per cell; then
   64 and 256 clients that ignore ``Retry-After`` (bench/overload.py).
3. TorchServe 0.12 (bench/torchserve.py), same weights, photos and clients, in the same run.
4. The int8 service.
5. A table of img/s, p50/p99 latency, errors and the ratios to the in-process limit and to
   TorchServe; RSS of the service at idle and at peak; the CPU's flags. Printed, and written to
   ``bench-results/`` as Markdown and JSON.

Ratios are what to compare across runs; absolute numbers move with the machine's other load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from bench import overload
from bench.inprocess import INT8_CACHE, in_process
from bench.torchserve import TorchServe
from service.hardware import cpu_flags
from service.runtime import apply_openmp_defaults, tune_malloc
from service.settings import SAMPLE_PHOTOS
from stress.load import Request, answered_within, closed_loop, percentile
from stress.server import rss_mb, sample_photos, start_server

ROOT = Path(__file__).resolve().parents[1]


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
    torchserve_img_s: float | None = None


# ---- the real service -------------------------------------------------------------------------
def drive(url: str, images: list[bytes], path: str, concurrency: int, seconds: float) -> tuple[list[float], int]:
    """`concurrency` keep-alive clients POST photos to `path` for `seconds`; latencies (s) of 200s, and errors."""
    headers = {"Content-Type": "application/octet-stream"}
    outcomes = closed_loop(url, lambda i: Request("POST", path, images[i % len(images)], headers), concurrency, seconds)
    outcomes = answered_within(outcomes, seconds)
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
    latencies, errors = drive(url, images, f"/features?{query}", concurrency, seconds)
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
    parser.add_argument("--overload", default="64,256", help="client counts that ignore Retry-After")
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
        info = requests.get(f"{server.url}/info", timeout=10).json()
        drive(server.url, images, "/features?layers=avgpool", 4, 2)  # warm-up: batch shapes, allocator
        time.sleep(1)
        idle = sum(rss_mb(pid) for pid in pids)
        cells: list[Cell] = []
        # The service's own path in process, in the dtype the service chose (auto: bfloat16 where the CPU has it).
        same_path = limit["variants"]["bfloat16" if info["dtype"] == "bfloat16" else "service"]
        for layer, query in cells_to_run:
            for concurrency in concurrencies:
                cells.append(
                    measure(server.url, images, layer, query, query, concurrency, args.seconds,
                            same_path[layer], limit["variants"]["channels_last"][layer])
                )  # fmt: skip
        peak = sum(rss_mb(pid, "VmHWM") for pid in pids)
        overload_clients = tuple(int(c) for c in args.overload.split(",") if c)
        goodput = overload.goodput(server.url, images, "/features?layers=avgpool", overload_clients, args.seconds)
        reference = requests.post(f"{server.url}/features?layers=avgpool", data=images[0], timeout=30).json()
    finally:
        server.stop()
    print("the same service without the admission wait (LAYERTAP_MAX_QUEUE_WAIT_MS=0) ...", flush=True)
    server = start_server(Path(args.out), {**env, "LAYERTAP_MAX_QUEUE_WAIT_MS": "0"})
    server.wait_ready()
    try:
        no_wait = overload.goodput(server.url, images, "/features?layers=avgpool", overload_clients, args.seconds)
    finally:
        server.stop()
    try:
        torchserve = run_torchserve(Path(args.out), images, concurrencies, args.seconds, reference, info["dtype"])
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # no Java, no package index: say so
        print(f"TorchServe skipped: {exc}", flush=True)
        torchserve = {"img_s": {}, "skipped": str(exc)}
    for cell in cells:
        if cell.query == "layers=avgpool":
            cell.torchserve_img_s = torchserve["img_s"].get(cell.concurrency)
    print("starting the int8 service ...", flush=True)
    env_int8 = {
        **env,
        "LAYERTAP_PRECISION": "int8",
        "LAYERTAP_INT8_CACHE_DIR": str(INT8_CACHE),
    }
    server = start_server(Path(args.out), env_int8)
    server.wait_ready(180)
    try:
        drive(server.url, images, "/features?layers=avgpool", 4, 2)
        for concurrency in concurrencies:
            cells.append(
                measure(server.url, images, "avgpool", "layers=avgpool", "layers=avgpool (int8)", concurrency,
                        args.seconds, limit["int8_avgpool"], limit["variants"]["channels_last"]["avgpool"])
            )  # fmt: skip
            cells[-1].torchserve_img_s = torchserve["img_s"].get(concurrency)
    finally:
        server.stop()
    report(limit, cells, (goodput, no_wait), torchserve, info, idle, peak, Path(args.out))


def run_torchserve(
    out: Path, images: list[bytes], concurrencies: list[int], seconds: float, reference: dict, dtype: str
) -> dict:
    """TorchServe on the service's seeded weights, same photos and clients; and its answer's cosine to layertap's."""
    import numpy as np
    import torch

    from service.model import build_model
    from service.model_repository import load_entry
    from service.settings import Settings
    from service.weights import resolve_weights

    folder = out / "torchserve"
    folder.mkdir(parents=True, exist_ok=True)
    entry = load_entry(Settings().model_repository, "resnet18")
    torch.save(build_model(entry, resolve_weights("random", entry)).state_dict(), folder / "state_dict.pt")
    print("starting TorchServe ...", flush=True)
    peer = TorchServe(folder, folder / "state_dict.pt", dtype=dtype)
    peer.start()
    try:
        theirs = np.asarray(peer.embed(images[0]), dtype=np.float64).ravel()
        ours = np.asarray(reference["features"]["avgpool"]["data"][0], dtype=np.float64).ravel()
        cosine = float(theirs @ ours / (np.linalg.norm(theirs) * np.linalg.norm(ours)))
        drive(peer.base_url, images, peer.path, 4, 2)  # warm-up
        img_s = {}
        for concurrency in concurrencies:
            latencies, errors = drive(peer.base_url, images, peer.path, concurrency, seconds)
            img_s[concurrency] = len(latencies) / seconds
            print(f"  TorchServe c={concurrency:<3d} {img_s[concurrency]:7.1f} img/s  errors {errors}", flush=True)
    finally:
        peer.stop()
    return {
        "img_s": img_s,
        "cosine_to_layertap": cosine,
        "workers": peer.workers,
        "threads": peer.threads,
        "dtype": dtype,
    }


def report(
    limit: dict,
    cells: list[Cell],
    goodputs: tuple[list, list],
    torchserve: dict,
    info: dict,
    idle: float,
    peak: float,
    out: Path,
) -> None:
    goodput, no_wait = goodputs
    flags = cpu_flags()
    lines = [
        f"# layertap benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"Machine: {os.cpu_count()} cores; CPU flags: {', '.join(flags) or 'none of avx2, avx512*, amx*'}; "
        f"torch threads per worker = cores ÷ workers. Photos: {SAMPLE_PHOTOS}. "
        "Weights: seeded random (speed does not depend on them).",
        f"The service ran with its defaults: dtype {info['dtype']}, preprocessing {info['preprocessing']['mode']}, "
        f"device {info['device']}.",
        "",
        "## In-process pipeline (decode + preprocess + forward at batch 16, no HTTP), img/s",
        "",
        "`service` is what the service runs in float32: channels_last with batch norms folded where the layer "
        "allows; `bfloat16` is the same in bfloat16 (fast where the CPU has AMX or AVX-512 BF16).",
        "",
        "| layer | NCHW | channels_last | service | bfloat16 |",
        "| --- | --- | --- | --- | --- |",
    ]
    variants = limit["variants"]
    for layer in variants["service"]:
        lines.append(
            f"| {layer} | {variants['nchw'][layer]:.1f} | {variants['channels_last'][layer]:.1f} | "
            f"{variants['service'][layer]:.1f} | {variants['bfloat16'][layer]:.1f} |"
        )
    lines += [
        "",
        f"Single image, in process (decode + preprocess + forward, avgpool): p50 {limit['single_image_ms']:.1f} ms; "
        f"preprocess alone, mean over the photos: {limit['preprocess_fast_ms']:.2f} ms "
        f"(`LAYERTAP_PREPROCESSING=exact`: {limit['preprocess_exact_ms']:.2f} ms).",
        "",
        f"## Service over loopback (gunicorn, {info.get('workers', 1)} worker(s)), and TorchServe in the same run",
        "",
        (
            f"TorchServe {TorchServe.version}: {torchserve['workers']} worker × {torchserve['threads']} torch threads, "
            f"{torchserve['dtype']}, batch 16, 5 ms (bench/torchserve_handler.py); its avgpool answer's cosine to "
            f"layertap's: {torchserve['cosine_to_layertap']:.6f}."
            if "skipped" not in torchserve
            else f"TorchServe skipped: {torchserve['skipped']}"
        ),
        "",
        "| request | clients | img/s | p50 ms | p99 ms | errors | × in-process, same path and dtype | "
        "× in-process float32 channels_last | TorchServe img/s | × TorchServe |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        peer = f"{c.torchserve_img_s:.1f} | {c.img_s / c.torchserve_img_s:.2f}" if c.torchserve_img_s else "| "
        lines.append(
            f"| `{c.query}` | {c.concurrency} | {c.img_s:.1f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.errors} | "
            f"{c.ratio:.2f} | {c.ratio_channels_last:.2f} | {peer} |"
        )
    lines += [
        "",
        "## Overload: clients that ignore Retry-After (`layers=avgpool`)",
        "",
        "With the default admission wait (`LAYERTAP_MAX_QUEUE_WAIT_MS`):",
        "",
        *overload.table(goodput),
        "",
        "The same service refusing at once (`LAYERTAP_MAX_QUEUE_WAIT_MS=0`), in the same run:",
        "",
        *overload.table(no_wait),
        "",
        f"RSS of the service (master + worker): idle {idle:.0f} MB, peak {peak:.0f} MB.",
        "",
    ]
    by = {(c.query, c.concurrency): c for c in cells}
    checks = []
    top = max(c.concurrency for c in cells)
    if ("layers=avgpool", 1) in by:
        gap = by[("layers=avgpool", 1)].p50_ms - limit["single_image_ms"]
        checks.append(f"single-client p50 − in-process single image = {gap:+.1f} ms (target ≤ 5)")
    if ("layers=avgpool", top) in by:
        cell = by[("layers=avgpool", top)]
        checks.append(
            f"avgpool, {top} clients: ×{cell.ratio:.2f} of the in-process pipeline in the service's dtype "
            f"(target ≥ 0.9), ×{cell.ratio_channels_last:.2f} of in-process float32 channels_last, "
            + (
                f"×{cell.img_s / cell.torchserve_img_s:.2f} of TorchServe side by side, same dtype"
                if cell.torchserve_img_s
                else "TorchServe not measured"
            )
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
            f"int8 avgpool, {top} clients: ×{int8_cell.img_s / float_cell.img_s:.2f} of the default service; "
            f"in process int8 {limit['int8_avgpool']:.0f} img/s"
        )
    worst = min((row.ratio for row in goodput[1:]), default=None)
    if worst is not None:
        checks.append(f"overload goodput: worst ×{worst:.2f} of the 4-client capacity (target ≥ 0.8)")
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
    record = {
        "cpu_flags": flags,
        "in_process": limit,
        "cells": [asdict(c) for c in cells],
        "overload": [asdict(row) for row in goodput],
        "overload_without_wait": [asdict(row) for row in no_wait],
        "torchserve": torchserve,
        "rss_idle_mb": idle,
        "rss_peak_mb": peak,
    }
    (out / f"bench-{stamp}.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"written to {out}/bench-{stamp}.md")


if __name__ == "__main__":
    main()
