"""Benchmark the real service against the in-process pipeline, in one run, on this machine.

1. In-process limit (bench/inprocess.py): decode + preprocess + batched forward, no HTTP, with
   the service's own modules, for each layer, in float32, bfloat16 and int8.
2. The real service (gunicorn, its config file, default settings) on a loopback port, driven with
   the photos in ``models/photos/`` by N keep-alive clients for a fixed time per cell, through
   ``/features`` and through the Open Inference Protocol (binary tensors, as tritonclient sends
   them); then 64 and 256 clients that ignore ``Retry-After`` (bench/overload.py).
3. TorchServe 0.12 (bench/torchserve.py), same weights, photos and clients, in the same run.
4. The int8 service; explanations per method (bench/explain.py).
5. A table of img/s, p50/p99 latency, errors and the ratios to the in-process limit and to
   TorchServe; RSS of the service at idle and at peak; the CPU's flags. Printed, and written to
   ``bench-results/`` as Markdown and JSON.

Ratios are what to compare across runs; absolute numbers move with the machine's other load.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import requests

from bench import explain, overload, profile
from bench.inprocess import INT8_CACHE, in_process
from bench.report import EMBEDDINGS, ONE_WORKER, Cell, report
from bench.torchserve import TorchServe
from service.ops.process import apply_openmp_defaults, tune_malloc
from stress.load import Request, drive, percentile, raw_posts
from stress.server import rss_mb, sample_photos, start_server

ROOT = Path(__file__).resolve().parents[1]


# ---- the real service -------------------------------------------------------------------------
def features_requests(images: list[bytes], query: str) -> list[Request]:
    return raw_posts(f"/features?{query}", images)


def v2_requests(images: list[bytes], layer: str) -> list[Request]:
    """One Open Inference Protocol request per photo, as tritonclient sends them: the photo in a binary BYTES
    tensor, the layer asked for as a binary output (the binary tensor data extension)."""
    requests_ = []
    for image in images:
        element = struct.pack("<I", len(image)) + image
        tensor = {"name": "images", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": len(element)}}
        outputs = [{"name": layer, "parameters": {"binary_data": True}}]
        header = json.dumps({"inputs": [tensor], "outputs": outputs}).encode()
        headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}
        requests_.append(Request("POST", "/v2/models/resnet18/infer", header + element, headers))
    return requests_


def embeddings_requests(images: list[bytes]) -> list[Request]:
    """One OpenAI embeddings request per photo, as the ``openai`` client sends it: a data URL, base64 answer."""
    requests_ = []
    for image in images:
        kind = "png" if image.startswith(b"\x89PNG") else "jpeg"
        url = f"data:image/{kind};base64,{base64.b64encode(image).decode()}"
        body = json.dumps({"model": "resnet18", "input": [url], "encoding_format": "base64"}).encode()
        requests_.append(Request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"}))
    return requests_


def measure(
    url: str,
    requests_: list[Request],
    layer: str,
    label: str,
    concurrency: int,
    seconds: float,
    limit_img_s: float,
    channels_last_img_s: float,
) -> Cell:
    """One table cell: drive `requests_` at `concurrency` for `seconds`, against its in-process limits."""
    latencies, errors = drive(url, requests_, concurrency, seconds)
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
    parser.add_argument(
        "--extra",
        default="avgpool:encoding=base64,layer1:encoding=base64,layer4:encoding=base64",
        help="extra cells as layer:query, comma-separated",
    )
    parser.add_argument("--v2", default="layer4", help="layers to bench through the Open Inference Protocol")
    parser.add_argument("--overload", default="64,256", help="client counts that ignore Retry-After")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the Markdown and JSON reports")
    args = parser.parse_args()
    images = sample_photos()
    layers = args.layers.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    # (layer, label, requests): /features cells, then the Open Inference Protocol's
    cells_to_run = [(layer, f"layers={layer}", features_requests(images, f"layers={layer}")) for layer in layers]
    for extra in filter(None, args.extra.split(",")):
        layer, query = extra.split(":", 1)
        cells_to_run.append((layer, f"layers={layer}&{query}", features_requests(images, f"layers={layer}&{query}")))
    for layer in filter(None, args.v2.split(",")):
        cells_to_run.append((layer, f"v2 binary layers={layer}", v2_requests(images, layer)))
    cells_to_run.append(("avgpool", EMBEDDINGS, embeddings_requests(images)))  # its embedding is avgpool's

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
        drive(server.url, features_requests(images, "layers=avgpool"), 4, 2)  # warm-up: batch shapes, allocator
        time.sleep(1)
        idle = sum(rss_mb(pid) for pid in pids)
        idle_worker = max(rss_mb(pid) for pid in pids[1:])
        cells: list[Cell] = []
        # The service's own path in process, in the dtype the service chose (auto: bfloat16 where the CPU has it).
        same_path = limit["variants"]["bfloat16" if info["dtype"] == "bfloat16" else "service"]
        for layer, label, requests_ in cells_to_run:
            for concurrency in concurrencies:
                cells.append(
                    measure(server.url, requests_, layer, label, concurrency, args.seconds,
                            same_path[layer], limit["variants"]["channels_last"][layer])
                )  # fmt: skip
        peak = sum(rss_mb(pid, "VmHWM") for pid in pids)  # before explanations: their float32 copy is extra
        print("explanations ...", flush=True)
        explain_rows = explain.service_rows(server.url, images, (1, 4), args.seconds)
        overload_clients = tuple(int(c) for c in args.overload.split(",") if c)
        goodput = overload.goodput(server.url, images, "/features?layers=avgpool", overload_clients, args.seconds)
        reference = requests.post(f"{server.url}/features?layers=avgpool", data=images[0], timeout=30).json()
    finally:
        server.stop()
    # The worker model side by side: one worker with every core (the CPU default until 2026-12) against the
    # default's two that split the cores and lend them when idle (docs/configuration.md).
    if info.get("workers", 1) > 1:
        print("the same service with one worker (LAYERTAP_WORKERS=1) ...", flush=True)
        server = start_server(Path(args.out), {**env, "LAYERTAP_WORKERS": "1"})
        server.wait_ready()
        try:
            avgpool = features_requests(images, "layers=avgpool")
            drive(server.url, avgpool, 4, 2)
            for concurrency in concurrencies:
                cells.append(
                    measure(server.url, avgpool, "avgpool", ONE_WORKER, concurrency, args.seconds,
                            same_path["avgpool"], limit["variants"]["channels_last"]["avgpool"])
                )  # fmt: skip
        finally:
            server.stop()
    print("the same service without the admission wait (LAYERTAP_MAX_QUEUE_WAIT_MS=0) ...", flush=True)
    server = start_server(Path(args.out), {**env, "LAYERTAP_MAX_QUEUE_WAIT_MS": "0"})
    server.wait_ready()
    try:
        no_wait = overload.goodput(server.url, images, "/features?layers=avgpool", overload_clients, args.seconds)
    finally:
        server.stop()
    # TorchServe in the service's dtype (like for like) and, where that differs, in float32 (its out-of-the-box).
    torchserve: dict[str, dict] = {}
    for dtype in dict.fromkeys((info["dtype"], "float32")):
        try:
            torchserve[dtype] = run_torchserve(Path(args.out), images, concurrencies, args.seconds, reference, dtype)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # no Java, no package index: say so
            print(f"TorchServe skipped: {exc}", flush=True)
            torchserve[dtype] = {"img_s": {}, "skipped": str(exc), "dtype": dtype}
    same = torchserve[info["dtype"]]["img_s"]
    for cell in cells:
        if cell.query in ("layers=avgpool", ONE_WORKER):
            cell.torchserve_img_s = same.get(cell.concurrency)
            cell.torchserve_float32_img_s = torchserve["float32"]["img_s"].get(cell.concurrency)
    print("starting the int8 service ...", flush=True)
    env_int8 = {
        **env,
        "LAYERTAP_PRECISION": "int8",
        "LAYERTAP_INT8_CACHE_DIR": str(INT8_CACHE),
    }
    server = start_server(Path(args.out), env_int8)
    server.wait_ready(180)
    try:
        avgpool = features_requests(images, "layers=avgpool")
        drive(server.url, avgpool, 4, 2)
        for concurrency in concurrencies:
            cells.append(
                measure(server.url, avgpool, "avgpool", "layers=avgpool (int8)", concurrency,
                        args.seconds, limit["int8_avgpool"], limit["variants"]["channels_last"]["avgpool"])
            )  # fmt: skip
            cells[-1].torchserve_img_s = same.get(concurrency)
            cells[-1].torchserve_float32_img_s = torchserve["float32"]["img_s"].get(concurrency)
    finally:
        server.stop()
    print("explanations in process ...", flush=True)
    cost = explain.in_process()
    report(
        limit, cells, (goodput, no_wait), torchserve, info, (idle, idle_worker), peak, Path(args.out),
        (explain.markdown(explain_rows, cost),), (explain.target_check(cost),),
    )  # fmt: skip
    print("profile of one loaded run (bench/profile.py) ...", flush=True)
    profile.main(["--out", args.out])


def run_torchserve(
    out: Path, images: list[bytes], concurrencies: list[int], seconds: float, reference: dict, dtype: str
) -> dict:
    """TorchServe on the service's seeded weights, same photos and clients; and its answer's cosine to layertap's."""
    import numpy as np

    folder = out / f"torchserve-{dtype}"
    folder.mkdir(parents=True, exist_ok=True)
    print("starting TorchServe ...", flush=True)
    peer = TorchServe(folder, dtype=dtype)
    peer.start()
    try:
        theirs = np.asarray(peer.embed(images[0]), dtype=np.float64).ravel()
        ours = np.asarray(reference["features"]["avgpool"]["data"][0], dtype=np.float64).ravel()
        cosine = float(theirs @ ours / (np.linalg.norm(theirs) * np.linalg.norm(ours)))
        posts = raw_posts(peer.path, images)
        drive(peer.base_url, posts, 4, 2)  # warm-up
        img_s = {}
        for concurrency in concurrencies:
            latencies, errors = drive(peer.base_url, posts, concurrency, seconds)
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


if __name__ == "__main__":
    main()
