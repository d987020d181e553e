"""``layertap-ray embed`` against ``layertap embed`` talking to a local server: same photos, same run, this machine.

The sample photos are copied into two folders (48 and 240 files, nested). Then, for each folder:

1. the service (its defaults) on loopback, and ``layertap embed`` with its default concurrency
   and batch size: the folder to an ``.npz``;
2. a local Ray with as many CPUs as the machine, and ``layertap-ray embed`` with one actor (the
   actor takes one of Ray's CPUs, the rest is left to the reads; torch in the actor uses every core, as
   the service's one worker does): the folder to Parquet.

Each row gives the seconds of each run, images per second over the large one, and the marginal
rate (the extra images over the extra seconds: what the fixed costs, Ray's start of an actor and
its model load, do not blur), the layer ``avgpool`` pooled. ``python -m
bench.ray``; ``make bench`` runs it after the main report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

SIZES = (12, 60)  # copies of the sample photos: a small and a large run, for the fixed and the marginal cost


def photo_folder(root: Path, copies: int) -> int:
    from stress.server import sample_photos

    photos = sample_photos()
    for copy in range(copies):
        folder = root / f"part-{copy % 3}" / f"copy-{copy}"
        folder.mkdir(parents=True)
        for index, data in enumerate(photos):
            (folder / f"{index}.jpg").write_bytes(data)
    return copies * len(photos)


def run_client(folders: list[Path], out: Path) -> list[float]:
    """Seconds of ``layertap embed`` on each folder, against one server started once (its start not counted)."""
    from layertap_client import LayertapClient
    from layertap_client.cli import embed

    from stress.server import start_server

    server = start_server(out, {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning"})
    server.wait_ready()
    seconds = []
    try:
        for index, folder in enumerate(folders):
            started = time.perf_counter()
            embed(
                folder, out / f"client-{index}.npz", LayertapClient(server.url), ["avgpool"], pool="avg", progress=False
            )
            seconds.append(time.perf_counter() - started)
    finally:
        server.stop()
    return seconds


def run_ray(folders: list[Path], out: Path) -> list[float]:
    """Seconds of ``layertap-ray embed`` on each folder, on one local Ray (its start and a first run, which
    starts Ray's worker processes, not counted; each run starts its actor and loads the model, as every run
    of the command does)."""
    import ray

    from service.bulk.ray_embed import embed

    os.environ["LAYERTAP_WEIGHTS"] = "random"
    os.environ["LAYERTAP_LOG_LEVEL"] = "warning"
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    seconds = []
    try:
        embed(str(folders[0]), str(out / "ray-warm-up"), ["avgpool"], pool="avg")  # Ray's first run starts its workers
        for index, folder in enumerate(folders):
            started = time.perf_counter()
            embed(str(folder), str(out / f"ray-{index}"), ["avgpool"], pool="avg", actors=1, batch_size=16)
            seconds.append(time.perf_counter() - started)
    finally:
        ray.shutdown()
    return seconds


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="layertap-bench-ray-"))
    try:
        counts = [photo_folder(work / f"photos-{copies}", copies) for copies in SIZES]
        folders = [work / f"photos-{copies}" for copies in SIZES]
        client = run_client(folders, work)
        ray_runs = run_ray(folders, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = counts
    lines = [
        f"## layertap-ray against layertap embed (avgpool pooled, {os.cpu_count()} cores, one run)",
        "",
        f"| path | {small} photos, s | {large} photos, s | img/s over {large} | marginal img/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, (short, long) in (
        ("`layertap embed` → local server", client),
        ("`layertap-ray embed`, 1 actor", ray_runs),
    ):
        marginal = (large - small) / (long - short) if long > short else float("nan")
        lines.append(f"| {label} | {short:.1f} | {long:.1f} | {large / long:.1f} | {marginal:.1f} |")
    lines += [
        "",
        "The server's start is not counted; each `layertap-ray` run includes its actor's start and model load.",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
