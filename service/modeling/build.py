"""Build the torch module a model entry describes and place it on its device.

Only a runner's model thread calls :func:`place`; building happens once per worker, after
gunicorn has forked (building in the master would start torch's thread pools before fork).
"""

from __future__ import annotations

import difflib

import torch
import torchvision
from torch import nn

from service.core.errors import StartupError, WeightsUnavailable
from service.modeling.entries import ModelEntry
from service.modeling.weights import Weights

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_model(entry: ModelEntry, weights: Weights) -> nn.Module:
    """The entry's architecture with the given weights, in eval mode, float32, on the CPU.

    torchvision's own weights go to the builder itself, which changes the network for some of them
    (GoogLeNet's and Inception v3's ``transform_input``, the ViT SWAG weights' ``image_size``, the
    auxiliary heads it builds to load and then drops): the result is exactly
    ``torchvision.models.get_model(architecture, weights=member)``. A file's state dict is loaded into
    ``builder(weights=None)``, the architecture's default configuration.
    """
    try:
        builder = torchvision.models.get_model_builder(entry.architecture)
    except ValueError:
        raise StartupError(f"model entry {entry.name!r}: {unknown_architecture(entry.architecture)}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed)
        if weights.member is not None:
            model = _pretrained(builder, weights)
        else:
            model = builder(weights=None)
    if weights.state_dict is not None:
        try:
            model.load_state_dict(weights.state_dict, strict=True)
        except RuntimeError:
            raise WeightsUnavailable(
                f"weights {weights.label} do not fit {entry.architecture}: {mismatch(model, weights.state_dict)} "
                f"(is the file a {entry.architecture} state dict?)"
            ) from None
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def unknown_architecture(name: str) -> str:
    """What to say of an architecture torchvision has no builder for: the close names it does have."""
    known = torchvision.models.list_models(module=torchvision.models)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"torchvision has no classification model {name!r}; {hint}list_models() lists all {len(known)}"


def mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor], shown: int = 3) -> str:
    """Why ``state_dict`` does not fit ``model``: its first missing, unexpected and misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} where the model has {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {what} keys ({'; '.join(keys[:shown])}{more})")
    return ", ".join(parts) or "its keys and shapes match, but it does not load"


def _pretrained(builder, weights: Weights) -> nn.Module:
    """The builder's own network for torchvision's weights, read from the torch cache."""
    try:
        return builder(weights=weights.member, progress=False)
    except Exception as exc:  # noqa: BLE001 - unpickling, shape and file errors all mean these weights are unusable
        raise WeightsUnavailable(
            f"weights {weights.label} do not load from the torch cache ({torch.hub.get_dir()}/checkpoints): "
            f"{str(exc).splitlines()[0]}; `python -m service weights download` fetches them again"
        ) from None


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
