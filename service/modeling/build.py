"""Build the model a model entry describes, by its library, and place it on its device.

Only a runner's model thread calls :func:`place`; building happens once per worker, after
gunicorn has forked (building in the master would start torch's thread pools before fork).
Each library builds its own models (service/modeling/sources/, with what they share in
service/modeling/loading.py); this module freezes them and places them.
"""

from __future__ import annotations

import torch
from torch import nn

from service.core.errors import StartupError
from service.modeling.entries import ModelEntry
from service.modeling.network import Network
from service.modeling.sources import source_module
from service.modeling.weights import Weights

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_network(entry: ModelEntry, weights: Weights) -> Network:
    """The entry's model with the given weights, built by its library (eval mode, float32, CPU, frozen), with
    the library's preprocessing unless the entry gives its own, and the call that computes its embedding."""
    network = source_module(entry).build(entry, weights)
    network.model.eval()
    for parameter in network.model.parameters():
        parameter.requires_grad_(False)
    if entry.preprocessing is not None:
        network = Network(**{**network.__dict__, "preprocessing": entry.preprocessing})
    return network


def build_model(entry: ModelEntry, weights: Weights) -> nn.Module:
    """The model of :func:`build_network`, alone."""
    return build_network(entry, weights).model


def resolve_device(spec: str, cuda_available: bool | None = None) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA device that does not exist is a start-up error.

    ``cuda_available``: whether this machine has CUDA; None asks torch."""
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if spec == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not cuda_available:
            raise StartupError(f"LAYERTAP_DEVICE={spec} but CUDA is not available here; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StartupError(f"LAYERTAP_DEVICE={spec} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def place(model: nn.Module, device: torch.device, dtype: str, channels_last: bool) -> nn.Module:
    """Move the model to its device, dtype and memory format."""
    model = model.to(device=device, dtype=DTYPES[dtype])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
