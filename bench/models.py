"""A row per shipped model entry, so users can choose a model by cost: ``python -m bench.models``.

For each entry of ``models/`` (random weights: speed does not depend on them), in one run:

- in process: the service's data plane without HTTP (decode, preprocess, batched forward to the
  entry's default layer), one thread submitting batches of 16 photos;
- the service: gunicorn on loopback with ``LAYERTAP_MODELS=<entry>``, 16 keep-alive clients
  posting the photos with no ``layers`` (the default layer), for a fixed time;
- memory: RSS of the service (master + worker) once warm, and the model's parameter count.

``make bench`` runs it after the main benchmark; the model table in docs/models.md comes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.ops.process import apply_openmp_defaults, tune_malloc
from stress.load import Request, closed_loop, percentile
from stress.server import rss_mb, sample_photos, start_server

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ModelRow:
    model: str
    default_layer: str
    layers: int
    parameters_m: float
    in_process_img_s: float
    service_img_s: float
    service_p50_ms: float
    errors: int
    rss_mb: float


def in_process(name: str, images: list[bytes], seconds: float) -> tuple[dict, float]:
    """(the model's /info description, img/s through the data plane at batch 16)."""
    from service.app import create_app
    from service.core.settings import Settings

    app = create_app(Settings(models=name, weights="random", device="cpu", log_level="warning"))
    plane = app.extensions["layertap.dataplane"]
    try:
        if not plane.wait_ready(300):
            raise RuntimeError(f"{name} did not load: {plane.failure}")
        batch = [images[i % len(images)] for i in range(16)]
        plane.extract(batch)  # warm-up at this batch size
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            plane.extract(batch)
            done += len(batch)
        rate = done / (time.perf_counter() - started)
        return plane.describe(), rate
    finally:
        plane.close()


def service(name: str, images: list[bytes], seconds: float, clients: int, out: Path) -> tuple[float, float, int, float]:
    """(img/s, p50 ms, errors, RSS MB once warm) of the real service serving only this model."""
    server = start_server(out, {"LAYERTAP_MODELS": name, "LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning"})
    server.wait_ready(300)
    try:
        headers = {"Content-Type": "application/octet-stream"}
        make = lambda i: Request("POST", "/features", images[i % len(images)], headers)  # noqa: E731
        closed_loop(server.url, make, clients, 2)  # warm-up: batch shapes, allocator
        rss = sum(rss_mb(pid) for pid in (server.process.pid, *server.workers()))
        outcomes = closed_loop(server.url, make, clients, seconds)
    finally:
        server.stop()
    latencies = [o.seconds for o in outcomes if o.status == 200]
    return len(latencies) / seconds, percentile(latencies, 0.5) * 1000, len(outcomes) - len(latencies), rss


def run(names: list[str], seconds: float, clients: int, out: Path) -> list[ModelRow]:
    images = sample_photos()
    rows = []
    for name in names:
        print(f"model {name} ...", flush=True)
        info, limit = in_process(name, images, min(seconds, 6))
        img_s, p50, errors, rss = service(name, images, seconds, clients, out)
        row = ModelRow(
            model=name,
            default_layer=info["default_layer"],
            layers=info["layers"],
            parameters_m=info["parameters"] / 1e6,
            in_process_img_s=limit,
            service_img_s=img_s,
            service_p50_ms=p50,
            errors=errors,
            rss_mb=rss,
        )
        print(f"  {row}", flush=True)
        rows.append(row)
    return rows


def table(rows: list[ModelRow], clients: int) -> str:
    lines = [
        f"| model | default layer | layers | parameters | in process, img/s | service, {clients} clients, img/s "
        "| ratio | p50 ms | errors | service RSS |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | `{r.default_layer}` | {r.layers} | {r.parameters_m:.1f} M | {r.in_process_img_s:.1f} | "
            f"{r.service_img_s:.1f} | ×{r.service_img_s / r.in_process_img_s:.2f} | {r.service_p50_ms:.0f} | "
            f"{r.errors} | {r.rss_mb:.0f} MB |"
        )
    return "\n".join(lines)


def cpu_flags() -> str:
    """The CPU features that change these numbers (AMX, AVX-512 and its bf16, AVX2)."""
    wanted = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512f", "avx2")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(next((line for line in text.splitlines() if line.startswith("flags")), "").split())
    return ", ".join(flag for flag in wanted if flag in flags) or "none of AVX2, AVX-512, AMX"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shipped = sorted(p.stem for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml"))
    parser.add_argument("--models", default=",".join(shipped), help="entries to bench, comma-separated (default all)")
    parser.add_argument("--seconds", type=float, default=8, help="duration of each service cell")
    parser.add_argument("--clients", type=int, default=16, help="keep-alive clients driving the service")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the Markdown and JSON reports")
    args = parser.parse_args()
    apply_openmp_defaults()  # the service's OpenMP and malloc tuning, for a like-for-like in-process figure
    tune_malloc()
    out = Path(args.out)
    rows = run(args.models.split(","), args.seconds, args.clients, out)
    header = (
        f"# layertap models, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{os.cpu_count()} cores; CPU flags: {cpu_flags()}. "
        "Random weights, the sample photos, each model's default layer.\n\n"
    )
    text = header + table(rows, args.clients) + "\n"
    text += (
        f"\nMedian service ÷ in process: ×{statistics.median(r.service_img_s / r.in_process_img_s for r in rows):.2f}\n"
    )
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"models-{stamp}.md").write_text(text)
    (out / f"models-{stamp}.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(f"written to {out}/models-{stamp}.md")


if __name__ == "__main__":
    main()
