"""What the hardware offers, and the defaults that follow from it: fast dtypes, batch sizes, processes.

Importing this module does not import torch: gunicorn's master reads the defaults to decide how
many workers to fork, and the master must never start torch (service/gunicorn_conf.py).

The rules, each measured (docs/hardware.md):

- **dtype** ``auto``: bfloat16 on CUDA, and on a CPU with bf16 arithmetic, either AMX
  (``amx_bf16``: Intel's matrix units; about 2.8× float32 in the issue's one measurement, not
  repeated here) or AVX-512 BF16 (``avx512_bf16``: 1.5 to 2.4× float32 across the shipped models,
  measured on 2 cores without AMX); float32 elsewhere,
  where bfloat16 is emulated and slower. In bfloat16 every layer of every shipped model stays
  within cosine 0.9995 of float32, on the CPU (worst 0.99988) and on an H200 (worst 0.99992).
  float16 is not the CUDA default: it overflows inside MobileNetV3, EfficientNet and ConvNeXt
  (cosine 0.007, 0.039 and 0.91 at their worst layers, bench/gpu.py), and is no faster at the
  batch sizes the service runs. Outputs are returned as float32 either way.
- **CPU sizing**: two workers, each with half the cores. One worker's request threads (reading,
  decoding, answering) share its GIL with the model thread, and its passes then hold every core,
  so decoding waits for the pass. Two workers overlap one's decoding with the other's pass: on 2
  cores with AMX, ResNet18 ``avgpool`` in bfloat16 went from 64 to 101 img/s at 4 clients and from
  98 to 120 at 16 (bench/README.md). A worker alone with work still takes every core for its
  passes (service/ops/cores.py), so a lone keep-alive client loses nothing. The price is memory:
  a model per worker.
- **CUDA sizing**: one process's GIL cannot feed a GPU (HTTP, JSON and the header checks are
  Python), so several workers share it: on an H200 with 16 cores, at 256 clients, 1 worker gave
  503 img/s, 4 gave 1,797 and 8 gave 2,862. Batches and queues are larger because a GPU batch of
  64 costs about what a batch of 16 does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The flags that decide speed here, in the order a report should list them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


@cache
def cpu_flags() -> tuple[str, ...]:
    """The REPORTED_FLAGS this CPU has (from /proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return tuple(flag for flag in REPORTED_FLAGS if flag in present)


def fast_dtype(device_type: str, flags: tuple[str, ...] | None = None) -> str:
    """The dtype ``LAYERTAP_DTYPE=auto`` picks: bfloat16 on CUDA and on CPUs with AMX or AVX-512 BF16, else float32."""
    if device_type == "cuda":
        return "bfloat16"
    flags = cpu_flags() if flags is None else flags
    if device_type == "cpu" and ("amx_bf16" in flags or "avx512_bf16" in flags):
        return "bfloat16"
    return "float32"


def cuda_expected(device: str, exists: Callable[[str], bool] = os.path.exists) -> bool:
    """Whether the ``LAYERTAP_DEVICE`` setting will give a GPU, judged without importing torch: for ``auto``,
    whether the NVIDIA driver's control device is there (``exists`` probes a path) and no GPU is hidden."""
    if device.startswith("cuda"):
        return True
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1")
    return device == "auto" and not hidden and exists("/dev/nvidiactl")


@cache
def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a container's limit).

    ``os.cpu_count()`` counts the host's cores, which in a pod limited to 4 CPUs would fork a worker
    per 2 of the node's 64 cores, and give each of them far too many torch threads. Read once per
    process (``/info`` asks on every call).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))  # a quota of 2.5 CPUs can keep 3 threads busy
    return max(1, cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs this process's cgroup may use (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``); None: no limit."""
    try:
        lines = cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy; a container sees its own group as the root
            for folder in (root / path.lstrip("/"), root):
                limit = _read(folder / "cpu.max")
                if limit:
                    quota, period = limit.split()[:2]
                    return None if quota == "max" else int(quota) / int(period)
        elif "cpu" in controllers.split(","):
            for folder in (root / "cpu" / path.lstrip("/"), root / "cpu"):
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota and period:
                    return None if int(quota) <= 0 else int(quota) / int(period)
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class Sizing:
    """Device-aware defaults for the settings a user does not set."""

    workers: int
    threads: int  # request threads per worker: above the queue, so that single images can fill it
    max_batch_size: int
    max_queue_images: int


def torch_threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for one worker, so that all workers together do not oversubscribe ``cores`` (default:
    :func:`available_cores`)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // workers)


def default_sizing(cuda: bool, cores: int | None = None) -> Sizing:
    """CPU: two workers (one on a single core), each with half the cores, batches of 16. CUDA: a worker per 2
    cores (at most 8), batches of 64."""
    cores = cores or available_cores()
    if not cuda:
        return Sizing(workers=min(2, cores), threads=64, max_batch_size=16, max_queue_images=32)
    return Sizing(workers=max(1, min(8, cores // 2)), threads=320, max_batch_size=64, max_queue_images=256)


def compute_dtype(dtype_setting: str, precision: str, device_type: str, flags: tuple[str, ...] | None = None) -> str:
    """The dtype a model runs in: the device's fast one for ``auto`` (``flags``: the CPU's, default this one's);
    int8 takes float32 inputs."""
    if precision == "int8":
        return "float32"
    return fast_dtype(device_type, flags) if dtype_setting == "auto" else dtype_setting
