"""What every library's builder shares: the seeded random init, strict state-dict loading, close-name hints."""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from service.core.errors import WeightsUnavailable
from service.modeling.entries import ModelEntry
from service.modeling.weights import Weights


def seeded(weights: Weights, make: Callable[[], nn.Module]) -> nn.Module:
    """``make()`` with torch's random generator seeded by ``weights.seed`` (and restored after), so that a
    random init is the same in every worker and every run."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed)
        return make()


def load_file(model: nn.Module, entry: ModelEntry, weights: Weights) -> None:
    """Load a file's state dict into ``model``, strictly; WeightsUnavailable names the first keys that do not fit."""
    try:
        model.load_state_dict(weights.state_dict, strict=True)
    except RuntimeError:
        raise WeightsUnavailable(
            f"weights {weights.label} do not fit {entry.architecture}: {mismatch(model, weights.state_dict)} "
            f"(is the file a {entry.source} {entry.architecture} state dict?)"
        ) from None


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


def close_names(name: str, known: list[str], what: str) -> str:
    """What to say of a name the library does not know: its close matches."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{what} has no model {name!r}; {hint}it knows {len(known)}"
