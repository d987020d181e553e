"""What the hardware offers, and the defaults that follow from it: fast dtypes, batch sizes, processes.

Importing this module does not import torch: gunicorn's master reads the defaults to decide how
many workers to fork, and the master must never start torch (service/gunicorn_conf.py).

The rules, each measured (README, "Hardware"):

- **dtype** ``auto``: bfloat16 on CUDA, and on a CPU with bf16 arithmetic, either AMX
  (``amx_bf16``: Intel's matrix units, about 3× float32) or AVX-512 BF16 (``avx512_bf16``: 1.5 to
  2.4× float32 across the shipped models, measured on 2 cores without AMX); float32 elsewhere,
  where bfloat16 is emulated and slower. In bfloat16 every layer of every shipped model stays
  within cosine 0.9995 of float32, on the CPU (worst 0.99988) and on an H200 (worst 0.99992).
  float16 is not the CUDA default: it overflows inside MobileNetV3, EfficientNet and ConvNeXt
  (cosine 0.007, 0.039 and 0.91 at their worst layers, bench/gpu.py), and is no faster at the
  batch sizes the service runs. Outputs are returned as float32 either way.
- **CUDA sizing**: one process's GIL cannot feed a GPU (HTTP, JSON and the header checks are
  Python), so several workers share it: on an H200 with 16 cores, at 256 clients, 1 worker gave
  503 img/s, 4 gave 1,797 and 8 gave 2,862. Batches and queues are larger because a GPU batch of
  64 costs about what a batch of 16 does.
"""

from __future__ import annotations

import os
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


def cuda_expected(device: str) -> bool:
    """Whether the ``LAYERTAP_DEVICE`` setting will give a GPU, judged without importing torch."""
    if device.startswith("cuda"):
        return True
    return device == "auto" and os.path.exists("/dev/nvidiactl")


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit).

    ``os.cpu_count()`` counts the host's cores, which in a pod limited to 4 CPUs would fork a worker
    per 2 of the node's 64 cores, and give each of them far too many torch threads.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, cores)
    if quota != "max" and int(period) > 0:
        cores = min(cores, -(-int(quota) // int(period)))  # a quota of 2.5 CPUs can keep 3 threads busy
    return max(1, cores)


@dataclass(frozen=True)
class Sizing:
    """Device-aware defaults for the settings a user does not set."""

    workers: int
    max_batch_size: int
    max_queue_images: int


def default_sizing(cuda: bool, cores: int | None = None) -> Sizing:
    """CPU: one worker with all the cores, batches of 16. CUDA: a worker per 2 cores (at most 8), batches of 64."""
    if not cuda:
        return Sizing(workers=1, max_batch_size=16, max_queue_images=32)
    cores = cores or available_cores()
    return Sizing(workers=max(1, min(8, cores // 2)), max_batch_size=64, max_queue_images=256)
