"""Process-wide tuning of the C runtimes under torch, applied by each worker before torch runs.

Two defaults of the C libraries below Python cost this service throughput on CPU:

- libgomp spins 300,000 times after each parallel region, burning the cores that request
  threads need for decoding; no spin at all (``OMP_WAIT_POLICY=PASSIVE``) costs single-image
  latency (+5 ms). A short spin keeps both. It must be in the environment before torch loads.
- glibc hands allocations above its mmap threshold (128 KiB, rising to at most 32 MiB) to fresh
  ``mmap`` calls and trims freed heap memory beyond 2× that back to the OS. Every float32 batch
  then page-faults its activations in again (the stem's output alone is 51 MB at batch 16). A
  fixed 256 MiB threshold keeps that memory in the heap: float32 forward at batch 16 in a
  thread goes from 86-96 to 108 img/s. A 128 MiB trim threshold gave 121 img/s, but let RSS
  swing by ±60 MB from one moment to the next (a leak check cannot see through that); 32 MiB
  keeps the swing within ~20 MB (soak drills, 6 runs each). In the service the worker's page
  faults drop from ~1,300 to ~25 per image (measured on 2 cores; int8 activations are 4×
  smaller and were not page-faulting).
"""

from __future__ import annotations

import ctypes
import os

OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "20000"}

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MALLOC_OPTIONS = {
    # Each of the many request threads would get its own arena, and freed image buffers stay
    # scattered across them; two arenas keep RSS ~80 MB lower and flat under a soak.
    "M_ARENA_MAX": (_M_ARENA_MAX, (2,)),
    "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, (32 << 20,)),
    # The first one glibc accepts: some releases refuse thresholds above 32 MiB.
    "M_MMAP_THRESHOLD": (_M_MMAP_THRESHOLD, (256 << 20, 32 << 20)),
}


def apply_openmp_defaults() -> None:
    """Put OPENMP_DEFAULTS into the environment unless already set; only effective before torch is imported."""
    for name, value in OPENMP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def tune_malloc() -> dict[str, int]:
    """Apply MALLOC_OPTIONS to glibc's allocator; returns what it accepted (nothing where libc is not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, macOS
        return {}
    applied = {}
    for name, (option, candidates) in MALLOC_OPTIONS.items():
        accepted = next((value for value in candidates if mallopt(option, value) == 1), None)
        if accepted is not None:
            applied[name] = accepted
    return applied


def release_free_heap() -> None:
    """Hand heap memory freed by a large job (loading, warm-up, a gradient pass) back to the OS (glibc keeps it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass
