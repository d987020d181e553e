"""``make stress``: the bad-input corpus, overload, soak and fault drills against the real service.

Prints one summary table (load held, inputs tried, requests lost) and exits non-zero if a drill
fails on correctness: a lost request, a wrong status, a leak, a worker not replaced. Throughput
under overload (the 90%-of-capacity target) is reported, not enforced: on a shared machine with
the load generator on the same cores it is a measurement, like the benchmark's.
``--short`` is the version CI runs (smaller counts, shorter load).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

from .attacks import slow_clients, slow_clients_row, tiny_requests
from .corpus import corpus, send
from .drills import kill_a_worker, overload, soak
from .server import Server, rss_mb, sample_photos, start_server


def _serve(log_dir: Path, **env: str) -> Server:
    # One worker unless a drill asks for more (the fault drill): each drill reads one worker's RSS, queue and
    # threads, and the CPU default of two would halve what reaches it.
    defaults = {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning", "LAYERTAP_WORKERS": "1"}
    server = start_server(log_dir, {**defaults, **env})
    server.wait_ready()
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="the CI version: smaller and shorter")
    args = parser.parse_args()
    photos = sample_photos()
    rows: list[tuple[str, str, str, str, bool]] = []  # drill, load held, inputs tried, lost, passed
    log_dir = Path(tempfile.mkdtemp(prefix="layertap-stress-"))

    server = _serve(log_dir, LAYERTAP_MAX_BODY_BYTES="1000000", LAYERTAP_MAX_IMAGES_PER_REQUEST="8")
    try:
        worker = server.workers()[0]
        items = corpus(photos[0], photos[-1], max_body_bytes=1_000_000, max_images=8)
        session, wrong = requests.Session(), []
        rss_before = rss_mb(worker)
        for item in items:
            started = time.perf_counter()
            response = send(session, server.url, item)
            if response.status_code not in item.expected or time.perf_counter() - started > 2:
                wrong.append(f"{item.kind}: {response.status_code}")
        healthy = requests.get(f"{server.url}/ready", timeout=5).status_code == 200 and server.workers() == [worker]
        rows.append(
            (
                "bad inputs",
                f"{len(items)} kinds, 4xx JSON in < 2 s, RSS +{rss_mb(worker) - rss_before:.0f} MB",
                str(len(items)),
                str(len(wrong)),
                not wrong and healthy,
            )
        )
        print(f"bad inputs: {len(items)} kinds, {len(wrong)} wrong {wrong}", flush=True)

        result = overload(server, photos, factor=3, seconds=8 if args.short else 20)
        passed = result.lost == 0 and result.max_s < 10 and result.recovery_status == 200
        target = "met" if result.accepted_rate >= 0.9 * result.capacity else "missed"
        rows.append(
            (
                "overload ×3",
                f"{result.offered:.0f} req/s offered vs capacity {result.capacity:.0f}/s; "
                f"accepted {result.accepted_rate:.0f}/s ({result.accepted_rate / result.capacity:.0%}, "
                f"target 90% {target}); "
                f"p99 200 {result.p99_ok_s:.2f} s, p99 429 {result.p99_shed_s * 1000:.0f} ms, "
                f"max {result.max_s:.2f} s; recovery {result.recovery_s * 1000:.0f} ms",
                f"{result.sent} ({result.shed} shed, {result.not_sent} not sent)",
                str(result.lost),
                passed,
            )
        )
        print(f"overload: {result}", flush=True)

    finally:
        server.stop()

    server = _serve(log_dir)  # a fresh worker: the soak measures its own growth, not overload's leftovers
    try:
        count = 1000 if args.short else 5000
        result = soak(server, photos, count=count)
        passed = (
            not result.failures
            and result.rss_growth_mb < 50
            and result.hooks_after == result.hooks_before
            and result.threads_after <= result.threads_before + 2
        )
        rows.append(
            (
                "soak",
                f"{result.requests} mixed requests in {result.seconds:.0f} s; RSS {result.rss_growth_mb:+.1f} MB; "
                f"hooks {result.hooks_before}→{result.hooks_after}; "
                f"threads {result.threads_before}→{result.threads_after}",
                str(result.requests),
                str(sum(result.failures.values())),
                passed,
            )
        )
        print(f"soak: {result}", flush=True)
    finally:
        server.stop()

    # Hostile clients (stress/attacks.py), on a default server: the limits as shipped.
    server = _serve(log_dir, LAYERTAP_HEADER_TIMEOUT_S="5", LAYERTAP_BODY_READ_TIMEOUT_S="5")
    try:
        tiny_png = (Path(__file__).parent / "tiny.png").read_bytes()
        all_layers = ",".join(
            layer["name"] for layer in requests.get(f"{server.url}/shapes", timeout=30).json()["layers"]
        )
        attacks = tiny_requests(server, tiny_png, all_layers)
        attacks.append(slow_clients_row(slow_clients(server, photos[0], body_read_timeout_s=5)))
        for attack in attacks:
            rows.append((f"attack: {attack.drill}", f"{attack.pass_line}: {attack.figures}", "1", "0", attack.passed))
            print(f"attack: {attack}", flush=True)
    finally:
        server.stop()

    server = _serve(log_dir, LAYERTAP_WORKERS="2", LAYERTAP_TORCH_THREADS="1", LAYERTAP_LOG_LEVEL="info")
    try:
        result = kill_a_worker(server, photos, seconds=10 if args.short else 20)
        passed = (
            result.replaced_by is not None
            and result.replacement_seconds is not None
            and result.failed_later == 0
            and result.not_ready_answers == 0
            and all(status == 200 for status in result.ready_probes)
        )
        rows.append(
            (
                "worker killed",
                f"SIGKILL pid {result.killed_pid}; replaced by {result.replaced_by} warm after "
                f"{result.replacement_seconds or float('nan'):.1f} s; /ready 200 on {len(result.ready_probes)} probes",
                str(result.requests),
                f"{result.failed_near_kill} in flight on it, {result.failed_later} after",
                passed,
            )
        )
        print(f"faults: {result}", flush=True)
    finally:
        server.stop()

    print("\n| drill | load held | inputs tried | requests lost | passed |\n| --- | --- | --- | --- | --- |")
    for drill, load, tried, lost, ok in rows:
        print(f"| {drill} | {load} | {tried} | {lost} | {'yes' if ok else 'NO'} |")
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
