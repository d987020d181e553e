"""``layertap-ray embed`` against ``layertap embed`` talking to a local server: same photos, same run, this machine.

The sample photos are copied into a folder (48 files, nested). Then, in turn:

1. the service (its defaults) on loopback, and ``layertap embed`` with its default concurrency
   and batch size: the folder to an ``.npz``;
2. a local Ray with as many CPUs as the machine, and ``layertap-ray embed`` with one actor (the
   actor takes one of Ray's CPUs, the rest is left to the reads; torch in the actor uses every core, as
   the service's one worker does): the folder to Parquet.

Each row gives images per second over the whole command (model load included: the server's
and the actor's start are timed apart and reported), the layer ``avgpool`` pooled. ``python -m
bench.ray``; ``make bench`` runs it after the main report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

COPIES = 12


def photo_folder(root: Path) -> int:
    from stress.server import sample_photos

    photos = sample_photos()
    for copy in range(COPIES):
        folder = root / f"part-{copy % 3}" / f"copy-{copy}"
        folder.mkdir(parents=True)
        for index, data in enumerate(photos):
            (folder / f"{index}.jpg").write_bytes(data)
    return COPIES * len(photos)


def run_client(root: Path, out: Path) -> dict:
    from layertap_client import LayertapClient
    from layertap_client.cli import embed

    from stress.server import start_server

    started = time.perf_counter()
    server = start_server(out, {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning"})
    server.wait_ready()
    ready = time.perf_counter()
    try:
        summary = embed(root, out / "client.npz", LayertapClient(server.url), ["avgpool"], pool="avg", progress=False)
    finally:
        server.stop()
    return {"start_s": ready - started, "run_s": time.perf_counter() - ready, "summary": summary}


def run_ray(root: Path, out: Path) -> dict:
    import ray

    from service.ray_embed import embed

    os.environ["LAYERTAP_WEIGHTS"] = "random"
    os.environ["LAYERTAP_LOG_LEVEL"] = "warning"
    started = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ready = time.perf_counter()
    try:
        embed(str(root), str(out / "ray"), ["avgpool"], pool="avg", actors=1, batch_size=16)
    finally:
        ray.shutdown()
    return {"start_s": ready - started, "run_s": time.perf_counter() - ready}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="layertap-bench-ray-"))
    try:
        count = photo_folder(work / "photos")
        client = run_client(work / "photos", work)
        ray_run = run_ray(work / "photos", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"## layertap-ray against layertap embed ({count} photos, avgpool pooled, {os.cpu_count()} cores)",
        "",
        "| path | start, s | embed, s (model load included for Ray) | img/s |",
        "| --- | --- | --- | --- |",
        f"| `layertap embed` → local server | {client['start_s']:.1f} | {client['run_s']:.1f} | "
        f"{count / client['run_s']:.1f} |",
        f"| `layertap-ray embed`, 1 actor | {ray_run['start_s']:.1f} | {ray_run['run_s']:.1f} | "
        f"{count / ray_run['run_s']:.1f} |",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
