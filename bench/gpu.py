"""On a CUDA machine: accuracy per dtype, the in-process limit, and the service at 1 to 256 clients, in one table set.

    make bench DEVICE=cuda      # or: python -m bench.gpu [--quick]

Made for a machine whose image has torch, torchvision, Pillow, numpy and requests but not flask,
gunicorn, orjson or pydantic-settings: install those from wheels first (``pip install
--no-index --find-links WHEELS flask gunicorn orjson pydantic-settings flask-swagger-ui``).
The whole run took 7 minutes on one H200 with 16 cores, most of it the accuracy sweep over
nine models; ``--quick`` (ResNet18, the default configuration only) takes a fraction. It prints:

1. **in process**: JPEG decode + resize + crop with Pillow (one thread) and on the GPU (batched
   nvjpeg, service/images/jpeg.py); ResNet18's forward pass to ``avgpool`` per dtype and batch; the
   whole GPU pipeline (decode on the GPU + bfloat16 forward) at the service's batch size, which
   is the limit the service is held to;
2. **the service** (gunicorn, default settings unless the row says otherwise) driven with the
   JPEG sample photos by N keep-alive clients spread over several load processes: img/s, p50,
   ratio to the in-process pipeline, GPU memory per worker.
3. **accuracy**, per entry of ``models/`` (seeded random weights, ``exact`` preprocessing, the
   sample photos): the worst cosine over photos and *every* layer between CUDA and CPU float32,
   and between CUDA float16/bfloat16 and CUDA float32 (the rule behind ``LAYERTAP_DTYPE=auto``);
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from service.app import create_app
from service.core.hardware import cpu_flags, default_sizing
from service.core.settings import DEFAULT_MODEL_REPOSITORY, SAMPLE_PHOTOS, Settings
from stress.load import Request, answered_within, closed_loop, closed_loop_processes, percentile
from stress.server import start_server

ROOT = Path(__file__).resolve().parents[1]
RAW = {"Content-Type": "application/octet-stream"}


# ---- 1. accuracy ------------------------------------------------------------------------------
def worst_cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    worst, where = 1.0, ""
    for name in a:
        x, y = (v.reshape(len(v), -1).astype(np.float64) for v in (a[name], b[name]))
        norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cosine = float(np.min(np.where(norms > 0, (x * y).sum(1) / np.maximum(norms, 1e-30), 1.0)))
        if cosine < worst:
            worst, where = cosine, name
    return worst, where


def extract(name: str, device: str, dtype: str, images: list[bytes], layers: tuple[str, ...] | None):
    settings = Settings(
        models=name, weights="random", device=device, dtype=dtype, preprocessing="exact", log_level="warning"
    )
    plane = create_app(settings).extensions["layertap.dataplane"]
    try:
        if not plane.wait_ready(600):
            raise RuntimeError(f"{name} on {device} {dtype}: {plane.failure}")
        layers = layers or tuple(c.name for c in plane.runner(None).layers)
        return plane.extract(images, layers).features
    finally:
        plane.close()


def accuracy_part(names: list[str], images: list[bytes], device: str) -> list[str]:
    rows = [
        "| model | layers | CUDA float32 vs CPU (worst layer) | float16 vs float32 | bfloat16 vs float32 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in names:
        cpu = extract(name, "cpu", "float32", images, None)
        cuda = extract(name, device, "float32", images, tuple(cpu))
        cells = [f"{c:.6f} (`{w}`)" for c, w in [worst_cosine(cpu, cuda)]]
        for dtype in ("float16", "bfloat16"):
            cells.append("{:.6f} (`{}`)".format(*worst_cosine(cuda, extract(name, device, dtype, images, tuple(cpu)))))
        rows.append(f"| {name} | {len(cpu)} | {' | '.join(cells)} |")
        print(rows[-1], flush=True)
    return rows


# ---- 2. in process ----------------------------------------------------------------------------
def rate(fn, items: int, seconds: float = 1.5) -> float:
    """Items per second of ``fn()`` (which handles ``items`` and returns on the host), after one warm-up call."""
    fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        done += items
    return done / (time.perf_counter() - started)


def in_process_part(jpegs: list[bytes], batch: int, device: str) -> tuple[list[str], float]:
    """Rows, and the whole GPU pipeline's img/s at the service's batch size (the service's limit)."""
    from service.images.jpeg import JpegBatchDecoder, inspect_jpeg
    from service.images.preprocess import ImagePreprocessor
    from service.modeling.build import DTYPES, build_model, place
    from service.modeling.entries import load_entry
    from service.modeling.tap import LayerTap
    from service.modeling.weights import resolve_weights

    cuda = torch.device(device)
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    spec = entry.preprocessing
    fast = ImagePreprocessor(spec, 40_000_000, "fast")
    decoder = JpegBatchDecoder(spec, cuda, fallback=fast)
    rows = ["| stage | batch | img/s |", "| --- | --- | --- |"]
    rows.append(f"| decode + resize + crop, Pillow `fast`, 1 thread | 1 | {rate(lambda: fast(jpegs[0]), 1):.0f} |")
    for size in (batch, 256):
        encoded = [inspect_jpeg(jpegs[i % len(jpegs)], fast) for i in range(size)]
        speed = rate(lambda e=encoded: torch.stack(decoder(e)).cpu(), size)
        rows.append(f"| decode + resize + crop, GPU (nvjpeg) | {size} | {speed:.0f} |")
    mean = torch.tensor(spec.mean, device=cuda).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=cuda).view(1, 3, 1, 1) * 255
    taps = {}
    for dtype in ("float32", "float16", "bfloat16"):
        model = build_model(entry, resolve_weights("random", entry))
        taps[dtype] = LayerTap(place(model, cuda, dtype, True))
        for size in (batch, 256):
            x = torch.randint(0, 255, (size, 3, spec.crop, spec.crop), device=cuda, dtype=torch.uint8)
            x = ((x.float() - mean) / std).to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)

            def forward(x=x, tap=taps[dtype]):
                with torch.inference_mode():
                    tap.capture(x, frozenset({"avgpool"}))["avgpool"].float().cpu()

            rows.append(f"| forward to avgpool, {dtype} | {size} | {rate(forward, size):.0f} |")
    encoded = [inspect_jpeg(jpegs[i % len(jpegs)], fast) for i in range(batch)]

    def pipeline():
        pixels = torch.stack(decoder(encoded))
        x = ((pixels.float() - mean) / std).bfloat16().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            taps["bfloat16"].capture(x, frozenset({"avgpool"}))["avgpool"].float().cpu()

    limit = rate(pipeline, batch)
    rows.append(f"| **GPU pipeline**: nvjpeg + bfloat16 forward to avgpool | {batch} | **{limit:.0f}** |")
    for row in rows[2:]:
        print(row, flush=True)
    return rows, limit


# ---- 3. the service ---------------------------------------------------------------------------
def gpu_memory_mb(pids: list[int]) -> list[int]:
    """GPU memory of each of these processes, from nvidia-smi (empty where it is missing)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True, timeout=20,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    used = {int(p): int(m) for p, m in (line.split(",") for line in out.strip().splitlines() if "," in line)}
    return [used[pid] for pid in pids if pid in used]


def service_part(
    jpegs: list[bytes], configs: list[tuple[str, dict, list[int]]], seconds: float, limit: float, out: Path, device: str
) -> list[str]:
    rows = [
        "| configuration | clients | img/s | p50 ms | errors | × in-process pipeline | GPU MB per worker |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    processes = max(2, (os.cpu_count() or 2) // 4)  # load generators: one Python process tops out near 2,000 req/s
    for label, env, clients in configs:
        server = start_server(out, {"LAYERTAP_DEVICE": device, "LAYERTAP_WEIGHTS": "random",
                                    "LAYERTAP_LOG_LEVEL": "warning", **env})  # fmt: skip
        server.wait_ready(300)
        try:
            closed_loop_processes(server.url, "/features", jpegs, RAW, 32, 2, processes)  # warm-up
            memory = gpu_memory_mb(server.workers())
            for count in clients:
                if count == 1:  # in this process: a pool's start-up would cost more than the cell
                    outcomes = closed_loop(
                        server.url, lambda i: Request("POST", "/features", jpegs[i % 2], RAW), 1, seconds
                    )
                else:
                    outcomes = closed_loop_processes(server.url, "/features", jpegs, RAW, count, seconds, processes)
                outcomes = answered_within(outcomes, seconds)
                ok = [o.seconds for o in outcomes if o.status == 200]
                img_s = len(ok) / seconds
                rows.append(
                    f"| {label} | {count} | {img_s:.0f} | {percentile(ok, 0.5) * 1000:.1f} | "
                    f"{len(outcomes) - len(ok)} | {img_s / limit:.2f} | {', '.join(map(str, memory)) or 'n/a'} |"
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = sorted(p.stem for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml"))
    parser.add_argument("--models", default=",".join(shipped), help="entries to check, comma-separated")
    parser.add_argument("--seconds", type=float, default=5, help="duration of each service cell")
    parser.add_argument("--quick", action="store_true", help="ResNet18 only, and fewer service rows")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script where there is no GPU")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the server logs")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs CUDA (or --device cpu for a smoke run)")
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    sizing = default_sizing(cuda=True, cores=cores)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "no GPU (smoke run)"
    print(f"{gpu}, torch {torch.__version__}, {cores} cores, CPU flags {cpu_flags()}")
    print(f"defaults on this machine: {sizing}", flush=True)
    photos = sorted(SAMPLE_PHOTOS.glob("*.jpg")) + sorted(SAMPLE_PHOTOS.glob("*.png"))
    images = [p.read_bytes() for p in photos]
    jpegs = [p.read_bytes() for p in photos if p.suffix == ".jpg"]
    rows, limit = in_process_part(jpegs, sizing.max_batch_size, args.device)
    tables = [*rows]
    device_env = {} if args.device == "cuda" else {"LAYERTAP_JPEG_DECODER": "device", "LAYERTAP_MAX_BATCH_SIZE": "64",
                                                   "LAYERTAP_MAX_QUEUE_IMAGES": "256"}  # fmt: skip
    configs = [
        ("defaults (auto: bfloat16, nvjpeg)", device_env, [1, 16, 64, 256]),
        ("float32", {"LAYERTAP_DTYPE": "float32"}, [256]),
        ("Pillow decoding", {"LAYERTAP_JPEG_DECODER": "pillow"}, [256]),
        ("1 worker", {"LAYERTAP_WORKERS": "1"}, [256]),
        (f"{sizing.workers // 2} workers", {"LAYERTAP_WORKERS": str(max(1, sizing.workers // 2))}, [256]),
    ]
    if args.quick:
        configs = configs[:1]
    tables += ["", *service_part(jpegs, configs, args.seconds, limit, Path(args.out), args.device)]
    tables += ["", *accuracy_part(["resnet18"] if args.quick else args.models.split(","), images, args.device)]
    print("\n" + "\n".join(tables) + f"\n\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
