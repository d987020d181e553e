"""A row per shipped model entry, so users can choose a model by cost: ``python -m bench.models``.

For each entry of ``models/`` (random weights: speed does not depend on them), in one run:

- in process: the service's data plane without HTTP (decode, preprocess, batched forward to the
  entry's default layer), one thread submitting batches of 16 photos;
- the service: gunicorn on loopback with ``LAYERTAP_MODELS=<entry>``, 16 keep-alive clients
  posting the photos with no ``layers`` (the default layer), for a fixed time;
- for entries with a text tower (CLIP, SigLIP): texts per second through it, in process, 16 texts
  of about 10 words per call;
- memory: RSS of the service (master + worker) once warm, and the model's parameter count;
- with ``--dtypes float32,bfloat16``: a row per dtype, and the cosine of the bfloat16 default
  layer to the float32 one on each photo (the lowest is reported): an entry whose embedding
  stays below 0.999 in bfloat16 says ``dtype = "float32"``.

Entries from timm, transformers and open_clip are benched with the pretrained path, from a
private Hugging Face cache that holds seeded weights of their real configurations
(tests/checkpoints.py): transformers' configurations come from the hub, which the bench cannot
reach either.

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
    dtype: str
    default_layer: str
    layers: int
    parameters_m: float
    in_process_img_s: float
    service_img_s: float
    service_p50_ms: float
    errors: int
    rss_mb: float
    bf16_cosine: float | None = None
    texts_s: float | None = None  # texts per second through the text tower, in process, batches of 16


def sourced_weights(names: list[str], out: Path) -> dict[str, dict[str, str]]:
    """The settings that serve each timm, transformers or open_clip entry from a private cache the bench fills."""
    from service.modeling.entries import load_entry
    from tests.checkpoints import fill_cache

    cache, settings = out / "hf-cache", {}
    for name in names:
        entry = load_entry(DEFAULT_MODEL_REPOSITORY, name)
        if entry.source == "torchvision":
            continue
        if not (cache / "done" / name).exists():
            fill_cache(cache, entry, out / "hf-work")
            (cache / "done").mkdir(parents=True, exist_ok=True)
            (cache / "done" / name).touch()
        settings[name] = {
            "LAYERTAP_WEIGHTS": "pretrained",
            "LAYERTAP_HUB_CACHE": str(cache),
            "LAYERTAP_ALLOW_DOWNLOAD": "false",
        }
    return settings


def bf16_cosine(name: str, images: list[bytes], env: dict[str, str]) -> float:
    """The lowest cosine, over the photos, of the default layer in bfloat16 to the same in float32."""
    import numpy as np

    from service.app import create_app
    from service.core.settings import Settings

    answers = {}
    for dtype in ("float32", "bfloat16"):
        app = create_app(Settings(models=name, device="cpu", log_level="warning", dtype=dtype, **_settings(env)))
        plane = app.extensions["layertap.dataplane"]
        try:
            if not plane.wait_ready(300):
                raise RuntimeError(f"{name} did not load: {plane.failure}")
            features = plane.extract(images).features
            answers[dtype] = next(iter(features.values())).reshape(len(images), -1).astype(np.float64)
        finally:
            plane.close()
    a, b = answers["float32"], answers["bfloat16"]
    cosines = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(cosines.min())


def _settings(env: dict[str, str]) -> dict:
    """LAYERTAP_* variables → Settings keyword arguments."""
    return {key.removeprefix("LAYERTAP_").lower(): value for key, value in env.items()}


def in_process(name: str, images: list[bytes], seconds: float, env: dict[str, str]) -> tuple[dict, float]:
    """(the model's /info description, img/s through the data plane at batch 16)."""
    from service.app import create_app
    from service.core.settings import Settings

    app = create_app(Settings(models=name, device="cpu", log_level="warning", **_settings(env)))
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
        info = plane.describe()
        if info["text"]:
            texts = [f"a photo of {n} grey cats asleep on a red sofa in the sun" for n in range(16)]
            plane.embed_text(texts)  # warm-up
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                plane.embed_text(texts)
                done += len(texts)
            info["texts_s"] = done / (time.perf_counter() - started)
        return info, rate
    finally:
        plane.close()


def service(
    name: str, images: list[bytes], seconds: float, clients: int, out: Path, env: dict[str, str]
) -> tuple[float, float, int, float]:
    """(img/s, p50 ms, errors, RSS MB once warm) of the real service serving only this model."""
    server = start_server(out, {"LAYERTAP_MODELS": name, "LAYERTAP_LOG_LEVEL": "warning", **env})
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


def run(names: list[str], seconds: float, clients: int, out: Path, dtypes: list[str]) -> list[ModelRow]:
    images = sample_photos()
    sourced = sourced_weights(names, out)
    rows = []
    for name in names:
        weights = sourced.get(name, {"LAYERTAP_WEIGHTS": "random"})
        cosine = bf16_cosine(name, images, weights) if "bfloat16" in dtypes else None
        for dtype in dtypes:
            print(f"model {name} ({dtype}) ...", flush=True)
            env = {**weights, "LAYERTAP_DTYPE": dtype}
            info, limit = in_process(name, images, min(seconds, 6), env)
            img_s, p50, errors, rss = service(name, images, seconds, clients, out, env)
            row = ModelRow(
                model=name,
                dtype=info["dtype"],
                default_layer=info["default_layer"],
                layers=info["layers"],
                parameters_m=info["parameters"] / 1e6,
                in_process_img_s=limit,
                service_img_s=img_s,
                service_p50_ms=p50,
                errors=errors,
                rss_mb=rss,
                bf16_cosine=cosine,
                texts_s=info.get("texts_s"),
            )
            print(f"  {row}", flush=True)
            rows.append(row)
    return rows


def table(rows: list[ModelRow], clients: int) -> str:
    lines = [
        "| model | dtype | default layer | layers | parameters | in process, img/s "
        f"| service, {clients} clients, img/s | ratio | p50 ms | errors | service RSS | bf16 ÷ f32 cosine, lowest "
        "| texts/s in process |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cosine = f"{r.bf16_cosine:.5f}" if r.bf16_cosine is not None else "—"
        lines.append(
            f"| {r.model} | {r.dtype} | `{r.default_layer}` | {r.layers} | {r.parameters_m:.1f} M | "
            f"{r.in_process_img_s:.1f} | {r.service_img_s:.1f} | ×{r.service_img_s / r.in_process_img_s:.2f} | "
            f"{r.service_p50_ms:.0f} | {r.errors} | {r.rss_mb:.0f} MB | {cosine} | "
            f"{f'{r.texts_s:.0f}' if r.texts_s else '—'} |"
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
    parser.add_argument(
        "--dtypes", default="auto", help="comma-separated: auto (the service's default), float32, bfloat16; a row each"
    )
    args = parser.parse_args()
    apply_openmp_defaults()  # the service's OpenMP and malloc tuning, for a like-for-like in-process figure
    tune_malloc()
    out = Path(args.out)
    rows = run(args.models.split(","), args.seconds, args.clients, out, args.dtypes.split(","))
    header = (
        f"# layertap models, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n{os.cpu_count()} cores; CPU flags: {cpu_flags()}. "
        "Random weights (seeded, perturbed ones of the real configurations for timm, transformers and open_clip), "
        "the sample photos, each model's default layer.\n\n"
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
