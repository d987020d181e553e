"""On a CUDA machine: every shipped model's layers against the CPU, and the service's speed on the GPU.

    python -m bench.gpu                 # needs torch with CUDA, and the server's dependencies

Made for a machine whose image has torch, torchvision, Pillow, numpy and requests but not flask,
gunicorn, orjson or pydantic-settings: install those from wheels first (``pip install
--no-index --find-links WHEELS flask gunicorn orjson pydantic-settings flask-swagger-ui``).
Prints one table per part:

1. each entry of ``models/`` (seeded random weights, ``exact`` preprocessing, the sample photos):
   the worst cosine over the photos and *every* layer between CUDA float32 and CPU float32, and
   the default layer's cosine in float16 and bfloat16 on CUDA;
2. the service (gunicorn, one worker, ``LAYERTAP_DEVICE=cuda``) driven by N keep-alive clients
   for a few seconds each: img/s and p50, per dtype.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from service.app import create_app
from service.settings import DEFAULT_MODEL_REPOSITORY, Settings
from stress.load import Request, closed_loop, percentile
from stress.server import sample_photos, start_server

ROOT = Path(__file__).resolve().parents[1]


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
    plane = create_app(
        Settings(models=name, weights="random", device=device, dtype=dtype, preprocessing="exact", log_level="warning")
    ).extensions["layertap.dataplane"]
    try:
        if not plane.wait_ready(600):
            raise RuntimeError(f"{name} on {device} {dtype}: {plane.failure}")
        runner = plane.runner(None)
        layers = layers or tuple(c.name for c in runner.layers)
        return plane.extract(images, layers).features, runner.default_layer
    finally:
        plane.close()


def models_part(names: list[str], images: list[bytes]) -> list[str]:
    rows = ["| model | layers | worst cosine, CUDA float32 vs CPU (layer) | float16 default layer | bfloat16 |"]
    rows.append("| --- | --- | --- | --- | --- |")
    for name in names:
        cpu, default = extract(name, "cpu", "float32", images, None)
        cuda, _ = extract(name, "cuda", "float32", images, tuple(cpu))
        worst, where = worst_cosine(cpu, cuda)
        halves = []
        for dtype in ("float16", "bfloat16"):
            half, _ = extract(name, "cuda", dtype, images, (default,))
            halves.append(worst_cosine({default: cpu[default]}, half)[0])
        rows.append(f"| {name} | {len(cpu)} | {worst:.6f} (`{where}`) | {halves[0]:.6f} | {halves[1]:.6f} |")
        print(rows[-1], flush=True)
    return rows


def service_part(images: list[bytes], clients: list[int], seconds: float, out: Path) -> list[str]:
    rows = ["| dtype | clients | img/s | p50 ms | errors |", "| --- | --- | --- | --- | --- |"]
    headers = {"Content-Type": "application/octet-stream"}
    make = lambda i: Request("POST", "/features", images[i % len(images)], headers)  # noqa: E731
    for dtype in ("float32", "float16"):
        env = {
            "LAYERTAP_DEVICE": "cuda",
            "LAYERTAP_DTYPE": dtype,
            "LAYERTAP_WEIGHTS": "random",
            "LAYERTAP_LOG_LEVEL": "warning",
            "LAYERTAP_MAX_BATCH_SIZE": "64",
            "LAYERTAP_MAX_QUEUE_IMAGES": "256",
            "LAYERTAP_THREADS": "300",
        }
        server = start_server(out, env)
        server.wait_ready(300)
        try:
            closed_loop(server.url, make, 16, 2)  # warm-up
            for count in clients:
                outcomes = closed_loop(server.url, make, count, seconds)
                ok = [o.seconds for o in outcomes if o.status == 200]
                rows.append(
                    f"| {dtype} | {count} | {len(ok) / seconds:.0f} | {percentile(ok, 0.5) * 1000:.1f} | "
                    f"{len(outcomes) - len(ok)} |"
                )
                print(rows[-1], flush=True)
        finally:
            server.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = sorted(p.stem for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml"))
    parser.add_argument("--models", default=",".join(shipped), help="entries to check, comma-separated")
    parser.add_argument("--clients", default="1,16,64", help="client counts for the service part")
    parser.add_argument("--seconds", type=float, default=5, help="duration of each service cell")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the server logs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs CUDA")
    started = time.perf_counter()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    images = sample_photos()
    tables = models_part(args.models.split(","), images)
    tables += ["", *service_part(images, [int(c) for c in args.clients.split(",")], args.seconds, Path(args.out))]
    print("\n" + "\n".join(tables) + f"\n\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
