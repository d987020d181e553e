"""Two commits of the service side by side, in one sitting: does a change keep the throughput?

    python -m bench.compare BEFORE [AFTER]      # git refs; AFTER defaults to the working tree

For a change that should not move performance (a refactor, a dependency bump). Each commit is
checked out into a temporary git worktree and served by this venv's gunicorn with its own
config, as ``make bench`` serves it (default settings, random weights). The two servers take
turns, ``--rounds`` times, so that drift in the machine's other load falls on both alike; every
cell drives the sample photos through ``/features?layers=avgpool`` at 1, 4 and 16 clients and
through the Open Inference Protocol (binary tensors, ``layer4``) at 4. The report gives img/s
and p50 per commit, the median over rounds, and the ratio AFTER ÷ BEFORE. A ratio within a few
percent of 1 is noise on a shared 2-core machine; the report prints the rounds' spread to show it.

``--openai`` drives OpenAI's ``/v1/embeddings`` (a data URL in, base64 out) and
``/features?layers=avgpool&encoding=base64`` instead, at 1, 4 and 16 clients, the two alternating
within each round, and adds the ``/v1`` ÷ ``/features`` ratio of each commit (make bench's target: ≥ 0.95).

``--startup`` measures start-to-ready instead: the seconds from spawning gunicorn to the first
200 from ``/ready`` (polled every 50 ms), the two commits taking turns, for a change that must
not slow the start (a new import, a new check in the master).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.__main__ import embeddings_requests, features_requests, v2_requests
from stress.load import drive, percentile
from stress.server import ROOT, sample_photos, start_server

CELLS = (  # (label, concurrency)
    ("features avgpool", 1),
    ("features avgpool", 4),
    ("features avgpool", 16),
    ("v2 binary layer4", 4),
)
OPENAI_CELLS = tuple((label, clients) for clients in (1, 4, 16) for label in ("features base64", "v1 base64"))


def checkout(ref: str, stack: ExitStack) -> Path:
    """``ref`` in a temporary worktree (removed on exit); "." is the working tree itself."""
    if ref == ".":
        return ROOT
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="layertap-compare-"))) / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), ref], check=True)
    stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)])
    return folder


def run_round(
    tree: Path, images: list[bytes], seconds: float, log_dir: Path, cells=CELLS
) -> dict[tuple[str, int], tuple]:
    """One pass over ``cells`` against a server run from ``tree``: {(label, clients): (img/s, p50 ms)}."""
    env = {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning", "PYTHONPATH": str(tree)}
    server = start_server(log_dir, env, cwd=tree)
    server.wait_ready()
    requests_ = {
        "features avgpool": features_requests(images, "layers=avgpool"),
        "v2 binary layer4": v2_requests(images, "layer4"),
        "features base64": features_requests(images, "layers=avgpool&encoding=base64"),
        "v1 base64": embeddings_requests(images),
    }
    try:
        drive(server.url, requests_["features avgpool"], 4, 2)  # warm-up: batch shapes, allocator
        results = {}
        for label, clients in cells:
            latencies, errors = drive(server.url, requests_[label], clients, seconds)
            if errors:
                raise RuntimeError(f"{errors} errors in {label} at {clients} clients (see {server.log_path})")
            results[(label, clients)] = (len(latencies) / seconds, percentile(latencies, 0.5) * 1000)
        return results
    finally:
        server.stop()


def startup_round(tree: Path, log_dir: Path) -> float:
    """Seconds from spawning a server run from ``tree`` to its first 200 from ``/ready``."""
    env = {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning", "PYTHONPATH": str(tree)}
    started = time.monotonic()
    server = start_server(log_dir, env, cwd=tree)
    try:
        server.wait_ready(poll=0.05)
        return time.monotonic() - started
    finally:
        server.stop()


def startup_report(rounds: dict[str, list[float]], before: str, after: str) -> None:
    print(f"\n| start-to-ready, s | {before} (range) | {after} (range) | ratio |")
    print("| --- | --- | --- | --- |")
    first, second = rounds[before], rounds[after]
    print(
        f"| median of {len(first)} | {statistics.median(first):.2f} ({min(first):.2f}–{max(first):.2f}) | "
        f"{statistics.median(second):.2f} ({min(second):.2f}–{max(second):.2f}) | "
        f"×{statistics.median(second) / statistics.median(first):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="a git ref")
    parser.add_argument("after", nargs="?", default=".", help="a git ref, or . for the working tree (default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8, help="duration of each cell")
    parser.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the servers' logs")
    parser.add_argument("--openai", action="store_true", help="/v1/embeddings against /features base64")
    parser.add_argument("--startup", action="store_true", help="measure start-to-ready instead of throughput")
    args = parser.parse_args()
    images = sample_photos()
    rounds: dict[str, list[dict]] = {args.before: [], args.after: []}
    cells = OPENAI_CELLS if args.openai else CELLS
    with ExitStack() as stack:
        trees = {ref: checkout(ref, stack) for ref in rounds}
        for number in range(args.rounds):
            for ref in rounds if number % 2 == 0 else reversed(rounds):  # ABBA: neither always goes first
                print(f"round {number + 1}: {ref} ...", flush=True)
                if args.startup:
                    rounds[ref].append(startup_round(trees[ref], Path(args.out)))
                else:
                    rounds[ref].append(run_round(trees[ref], images, args.seconds, Path(args.out), cells))
    if args.startup:
        startup_report(rounds, args.before, args.after)
        return
    print(f"\n| cell | clients | {args.before} img/s | {args.after} img/s | ratio | p50 ms before → after |")
    print("| --- | --- | --- | --- | --- | --- |")
    for cell in cells:
        before = [r[cell][0] for r in rounds[args.before]]
        after = [r[cell][0] for r in rounds[args.after]]
        p50_before = statistics.median(r[cell][1] for r in rounds[args.before])
        p50_after = statistics.median(r[cell][1] for r in rounds[args.after])
        spread = f"{min(before):.1f}–{max(before):.1f}", f"{min(after):.1f}–{max(after):.1f}"
        ratio = statistics.median(after) / statistics.median(before)
        print(
            f"| {cell[0]} | {cell[1]} | {statistics.median(before):.1f} ({spread[0]}) | "
            f"{statistics.median(after):.1f} ({spread[1]}) | ×{ratio:.3f} | {p50_before:.1f} → {p50_after:.1f} |"
        )
    if args.openai:
        openai_report(rounds, args.before, args.after)


def openai_report(rounds: dict[str, list[dict]], before: str, after: str) -> None:
    """``/v1`` ÷ ``/features`` base64 per commit: the medians over rounds of each round's own ratio."""
    print(f"\n| /v1 ÷ /features base64 | clients | {before} | {after} |")
    print("| --- | --- | --- | --- |")
    for clients in (1, 4, 16):
        ratios = [
            statistics.median(r[("v1 base64", clients)][0] / r[("features base64", clients)][0] for r in rounds[ref])
            for ref in (before, after)
        ]
        print(f"| | {clients} | ×{ratios[0]:.3f} | ×{ratios[1]:.3f} |")


if __name__ == "__main__":
    main()
