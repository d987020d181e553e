"""Where the loaded workers' CPU goes, per image: a py-spy profile of the real service under load.

``python -m bench.profile`` starts the service with its defaults (seeded random weights), drives
it with N keep-alive clients, and samples its workers with py-spy (a sampling profiler that reads
the process from outside: the service runs unchanged and unslowed). Two windows of the same load:

1. a flame graph per worker, ``bench-results/profile-<cell>-worker<N>.svg``;
2. collapsed stacks (``profile-<cell>-worker<N>.txt``, the format flamegraph.pl and speedscope
   read), classified into the table below, with the images the service answered in that window.

The CPU each thread used in the window is read from ``/proc`` (exact, whatever the threads
waited on: the GIL, a core, a lock). py-spy's samples of a thread then split that thread's CPU by
what it was doing (samples of a thread blocked on a lock or socket are left out). Threads py-spy
never sees are native: torch's OpenMP pool, which runs the forward pass beside the model thread.
The table is CPU milliseconds per image (all workers together), by thread and by activity:

- **request threads** (gthread's pool): HTTP parsing and the framework, body reading, decode and
  resize, admission and the queue handoff, serialization, logging and metrics;
- **the model thread**: batch assembly, the forward pass with its hooks, the answer's copy out;
  **torch's OpenMP threads**: the rest of the forward pass;
- **gthread's main thread**: accepting and polling connections, gathering request heads.

A stack is put in the first category whose marker it holds, most specific first (a decode inside
the framework's dispatch is a decode). ``--query`` picks the request (default ``layers=avgpool``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from stress.load import drive, raw_posts
from stress.server import sample_photos, start_server

ROOT = Path(__file__).resolve().parents[1]
# Samples per second: ~1,000 per thread over a 10 s window. py-spy's own CPU (~3 ms per image at this rate on
# 2 cores) shows in the table, outside the workers.
RATE = 100

# (thread, category, markers): a stack belongs to the first row of its thread with a marker in it.
CATEGORIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model thread", "forward pass and hooks", ("runner.py", "tap.py", "torch/nn/", "folding.py", "runners/work.py")),
    ("model thread", "batch assembly and handoff", ("batcher.py", "images/batch.py", "normalize.py")),
    ("request threads", "decode and resize", ("service/images/", "PIL/")),
    (
        "request threads",
        "body reading",
        ("bodies.py", "upload_gate.py", "formparser.py", "werkzeug/wsgi.py", "http/worker.py"),
    ),
    ("request threads", "admission and queue handoff", ("admission.py", "batcher.py", "concurrent/futures")),
    ("request threads", "serialization", ("answers.py", "arrays.py", "responses.py")),
    ("request threads", "logging and metrics", ("ops/logs.py", "logging/", "prometheus_client", "ops/metrics.py")),
    ("request threads", "data plane (checks, options)", ("dataplane/",)),
    ("request threads", "HTTP parsing and framework", ("gunicorn/", "werkzeug/", "flask/", "app.py")),
    ("gthread main thread", "accept, poll, gather heads", ("gthread.py", "selectors.py", "http/worker.py")),
)
# A stack whose innermost frame is one of these waits: py-spy does not always tell a blocked thread from a
# running one, and a wait is no CPU.
WAITING_FRAMES = ("_worker (concurrent/futures/thread.py",)  # an idle pool thread, blocked in C on its queue
WAITING = re.compile(r"^(\S*\.)?(wait|_wait_for_tstate_lock|select|poll|acquire|recv|recv_into|accept|sleep|result) \(")


@dataclass
class Profile:
    images: int
    seconds: float
    ms_per_image: dict[tuple[str, str], float]
    machine_ms_per_image: dict[str, float]  # the load generator, the rest of the machine, idle cores

    def markdown(self) -> str:
        rows = ["| thread | activity | CPU ms per image | share |", "| --- | --- | --- | --- |"]
        total = sum(self.ms_per_image.values()) or 1.0
        for (thread, activity), ms in sorted(self.ms_per_image.items(), key=lambda item: -item[1]):
            rows.append(f"| {thread} | {activity} | {ms:.2f} | {ms / total:.0%} |")
        rows.append(f"| the workers | ({self.images / self.seconds:.1f} img/s) | {total:.2f} | 100% |")
        for name, ms in self.machine_ms_per_image.items():
            rows.append(f"| outside the workers | {name} | {ms:.2f} | |")
        return "\n".join(rows)


def thread_class(name: str) -> str:
    """Which of the worker's threads a Python thread is, by its name."""
    if name.startswith("layertap-"):
        return "model thread"  # service/batching/batcher.py names it after its model
    if name.startswith("ThreadPoolExecutor"):
        return "request threads"  # gthread's pool
    if name == "MainThread":
        return "gthread main thread"
    return "other threads"


def activity(thread: str, stack: str) -> str | None:
    """What a thread was doing in one sampled stack (frames root first, ``;``-separated); None when it waited."""
    leaf = stack.rsplit(";", 1)[-1]
    if WAITING.match(leaf) or leaf.startswith(WAITING_FRAMES):
        return None
    for owner, name, markers in CATEGORIES:
        if owner == thread and any(marker in stack for marker in markers):
            return name
    return "other"


def samples_by_thread(text: str) -> dict[int, tuple[str, Counter]]:
    """py-spy's raw output with ``--threads`` (``thread (TID): NAME;frame;... count``): per thread id, its
    class and its samples per activity (None: waiting)."""
    threads: dict[int, tuple[str, Counter]] = {}
    for line in text.splitlines():
        match = re.match(r"thread \((\d+)\)(?:: ([^;]*))?;?(.*) (\d+)$", line)
        if not match:
            continue
        tid, name, stack, count = int(match[1]), match[2] or "", match[3], int(match[4])
        thread = thread_class(name)
        threads.setdefault(tid, (thread, Counter()))[1][activity(thread, stack)] += count
    return threads


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU of each of ``pid``'s threads so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / ticks, idle / ticks


def summarize(samples: dict[int, tuple[str, Counter]], cpu: dict[int, float], images: int, seconds: float) -> Profile:
    """Each thread's CPU, split by its samples' activities; threads py-spy never saw are torch's native ones."""
    ms: Counter = Counter()
    for tid, used in cpu.items():
        thread, counts = samples.get(tid, ("torch's OpenMP threads", Counter({"forward pass": 1})))
        running = Counter({name: count for name, count in counts.items() if name is not None})
        running = running or Counter({"other": 1})  # sampled only while waiting: its CPU is unaccounted for
        total = sum(running.values())
        for name, count in running.items():
            ms[(thread, name)] += used * 1000 * count / total / max(images, 1)
    return Profile(images=images, seconds=seconds, ms_per_image=dict(ms), machine_ms_per_image={})


def record(pid: int, seconds: float, output: Path, fmt: str) -> subprocess.Popen:
    py_spy = Path(sys.executable).with_name("py-spy")
    command = [str(py_spy), "record", "--pid", str(pid), "--rate", str(RATE), "--duration", str(int(seconds)),
               "--format", fmt, "--output", str(output), "--nonblocking", "--threads"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def loaded_window(
    url: str, pids: list[int], query: str, clients: int, seconds: float, outputs: list[Path], fmt: str
) -> tuple[int, dict[int, float], dict[str, float]]:
    """Images answered, and each thread's CPU seconds, while py-spy samples each worker (one output each) for
    ``seconds``."""
    answered: list[int] = []
    posts = raw_posts(f"/features?{query}", sample_photos())
    load = threading.Thread(target=lambda: answered.append(len(drive(url, posts, clients, seconds + 2)[0])))
    load.start()
    time.sleep(1)  # the clients are connected and the load steady

    def threads_cpu() -> dict[int, float]:  # thread ids are unique across processes
        return {tid: used for pid in pids for tid, used in thread_cpu_seconds(pid).items()}

    before, machine_before, generator_before = threads_cpu(), machine_cpu_seconds(), time.process_time()
    profilers = [record(pid, seconds, output, fmt) for pid, output in zip(pids, outputs, strict=True)]
    errors = [profiler.communicate(timeout=seconds + 60)[1] for profiler in profilers]
    after, machine_after, generator_after = threads_cpu(), machine_cpu_seconds(), time.process_time()
    load.join()
    for profiler, error in zip(profilers, errors, strict=True):
        if profiler.returncode != 0:
            raise RuntimeError(f"py-spy failed: {error.strip()[-500:]}")
    cpu = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    machine = {
        "the load generator (this process)": generator_after - generator_before,
        "busy, all else (py-spy, the kernel, other load)": (machine_after[0] - machine_before[0])
        - (generator_after - generator_before)
        - sum(cpu.values()),
        "idle cores": machine_after[1] - machine_before[1],
    }
    return round(answered[0] * seconds / (seconds + 2)), cpu, machine  # the sampled part of the window


def cell_name(query: str, clients: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{query}-c{clients}").strip("-")


def profile(query: str, clients: int, seconds: float, out: Path, env: dict[str, str] | None = None) -> Profile:
    """Start the service, warm it, write its flame graph and collapsed stacks to ``out``; the per-image table."""
    out.mkdir(parents=True, exist_ok=True)
    server = start_server(out, {"LAYERTAP_WEIGHTS": "random", "LAYERTAP_LOG_LEVEL": "warning", **(env or {})})
    server.wait_ready()
    try:
        workers = sorted(server.workers())
        drive(server.url, raw_posts(f"/features?{query}", sample_photos()), clients, 3)  # warm: shapes, allocator
        name = cell_name(query, clients)
        graphs = [out / f"profile-{name}-worker{i + 1}.svg" for i in range(len(workers))]
        loaded_window(server.url, workers, query, clients, seconds, graphs, "flamegraph")
        raws = [out / f"profile-{name}-worker{i + 1}.txt" for i in range(len(workers))]
        images, cpu, machine = loaded_window(server.url, workers, query, clients, seconds, raws, "raw")
        result = summarize(samples_by_thread("\n".join(raw.read_text() for raw in raws)), cpu, images, seconds)
        result.machine_ms_per_image = {name: used * 1000 / max(images, 1) for name, used in machine.items()}
        return result
    finally:
        server.stop()


def cpu_flags() -> str:
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
    return f"{os.cpu_count()} cores, " + " ".join(flag for flag in wanted if flag in flags)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", default="layers=avgpool", help="the /features query string")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10, help="each of the two sampled windows")
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args(argv)
    result = profile(args.query, args.clients, args.seconds, Path(args.out))
    print(f"\n{args.query}, {args.clients} clients; {cpu_flags()}\n")
    print(result.markdown())
    table = {f"{thread} / {name}": round(ms, 3) for (thread, name), ms in result.ms_per_image.items()}
    path = Path(args.out) / f"profile-{cell_name(args.query, args.clients)}.json"
    path.write_text(json.dumps({"images": result.images, "seconds": args.seconds, "cpu_ms_per_image": table}, indent=1))


if __name__ == "__main__":
    main()
