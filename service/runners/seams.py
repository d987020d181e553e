"""What a runner takes from its surroundings, as values that can be swapped: its device, how it places its
model, what happens before each forward pass, and which CPU (flags, cores) it believes it has.

Why: tests (and tools such as benchmarks) need to make a model load slowly, fail to load, crash or
stall mid-pass, or run on a device or CPU the machine lacks. Patching module globals did that
behind the code's back and for every model in the process at once; a :class:`RunnerSeams` is
handed to :class:`~service.runners.runner.ModelRunner` (through ``DataPlane.from_settings`` and
``create_app``) and reaches only the runners built with it. Every default is the production
behaviour, so ``RunnerSeams()`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from service.modeling.build import place


@dataclass(frozen=True)
class ForwardChunk:
    """One forward pass the model thread is about to run: the model's name, the module that will run
    (the served model, or its batch-norm-folded twin), the layers wanted and the input chunk (at most
    ``LAYERTAP_MAX_BATCH_SIZE`` images; the warm-up passes at load time included)."""

    model: str
    module: nn.Module
    layers: frozenset[str]
    inputs: torch.Tensor


@dataclass(frozen=True)
class RunnerSeams:
    """How runners meet the world; each default is what the service does.

    - ``device``: the device to run on; None resolves ``LAYERTAP_DEVICE`` (service/modeling/build.py).
    - ``place``: ``(model, device, dtype, channels_last) → model``, how the model thread puts a model on
      its device, dtype and memory format (service.modeling.build.place). Slow: a slow load; raising: a
      failed load.
    - ``before_pass``: called on the model thread with each :class:`ForwardChunk` before it runs (None:
      nothing). Raising fails the batch (a ``BaseException`` kills the thread, as a crash would); blocking
      stalls the model.
    - ``cpu_flags``: the CPU flags the dtype rule and ``/info`` see (service/core/hardware.py); None: this
      CPU's.
    - ``cores``: the cores the runner divides among the workers and borrows when the others are idle
      (service/ops/cores.py); None: those this process may use.
    """

    device: torch.device | None = None
    place: Callable[[nn.Module, torch.device, str, bool], nn.Module] = place
    before_pass: Callable[[ForwardChunk], None] | None = None
    cpu_flags: tuple[str, ...] | None = None
    cores: int | None = None
