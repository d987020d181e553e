"""An independent ResNet18 forward pass, written out by hand, for golden tests.

It calls each leaf module directly and uses out-of-place ops only (``torch.relu``, ``a + b``),
so every intermediate value stays what its module computed. It shares no code with
service.modeling.tap: if the hooks return post-ReLU ``bn1`` or post-residual ``bn2``, the
comparison fails.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def reference_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer name layertap exposes for a torchvision ResNet18/34, mapped to its true output."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        h = out["conv1"] = model.conv1(x)
        h = out["bn1"] = model.bn1(h)
        h = out["relu"] = torch.relu(h)
        h = out["maxpool"] = model.maxpool(h)
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(model, stage)):
                p = f"{stage}.{index}"
                o = out[f"{p}.conv1"] = block.conv1(h)
                o = out[f"{p}.bn1"] = block.bn1(o)
                o = out[f"{p}.relu"] = torch.relu(o)
                o = out[f"{p}.conv2"] = block.conv2(o)
                o = out[f"{p}.bn2"] = block.bn2(o)
                identity = h
                if block.downsample is not None:
                    identity = out[f"{p}.downsample.0"] = block.downsample[0](h)
                    identity = out[f"{p}.downsample.1"] = block.downsample[1](identity)
                    out[f"{p}.downsample"] = identity
                h = out[f"{p}.relu_1"] = torch.relu(o + identity)
                out[p] = h
            out[stage] = h
        h = out["avgpool"] = model.avgpool(h)
        out["fc"] = model.fc(torch.flatten(h, 1))
    return out


def normalize(pixels: np.ndarray) -> torch.Tensor:
    """(n, h, w, 3) uint8 → normalized float32 NCHW, as torchvision's ImageClassification does."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def cosine(a, b) -> float:
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64).flatten()
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64).flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def row_cosines(a, b) -> np.ndarray:
    """The cosine of each row (image) of two batches of any shape, in float64."""
    a, b = (np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in (a, b))
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def every_call(model: nn.Module, x: torch.Tensor, run=None) -> dict[str, torch.Tensor]:
    """Every module call's output, cloned the moment it returns, named as torchvision FX names calls.

    The second, generic reference, for any architecture: a plain hook per module, written here
    apart from service.modeling.tap. A tuple output (attention's ``(output, weights)``) is its first
    element, a mapping (transformers' ``ModelOutput``) its first value. ``run(model, x)`` is the
    library's own call (default: ``model(x)``).
    """
    out: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(_module, _inputs, output):
            if isinstance(output, tuple):
                output = output[0]
            elif isinstance(output, dict):
                output = next(iter(output.values()), None)
            if isinstance(output, torch.Tensor):
                index = counts.get(name, 0)
                counts[name] = index + 1
                out[name if index == 0 else f"{name}_{index}"] = output.detach().clone()

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(x) if run is None else run(model, x)
    finally:
        for handle in handles:
            handle.remove()
    return out


def reference_activation_and_gradient(
    model: nn.Module, x: torch.Tensor, name: str, target: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The named ResNet18 value, ``d logits[:, target] / d value`` and the logits, from the hand-written forward.

    The named value is made a leaf where it is computed and the pass goes on from it, out of
    place: the gradient is with respect to exactly that value (pre-ReLU ``bn1``, the second
    ``relu`` of a block), the independent side of the explanation tests.
    """
    leaf: dict[str, torch.Tensor] = {}

    def tap(key: str, value: torch.Tensor) -> torch.Tensor:
        if key == name:
            value = leaf["value"] = value.detach().requires_grad_(True)
        return value

    with torch.enable_grad():
        h = tap("conv1", model.conv1(x))
        h = tap("bn1", model.bn1(h))
        h = tap("relu", torch.relu(h))
        h = tap("maxpool", model.maxpool(h))
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for index, block in enumerate(getattr(model, stage)):
                p = f"{stage}.{index}"
                o = tap(f"{p}.conv1", block.conv1(h))
                o = tap(f"{p}.bn1", block.bn1(o))
                o = tap(f"{p}.relu", torch.relu(o))
                o = tap(f"{p}.conv2", block.conv2(o))
                o = tap(f"{p}.bn2", block.bn2(o))
                identity = h if block.downsample is None else block.downsample(h)
                h = tap(f"{p}.relu_1", torch.relu(o + identity))
                h = tap(p, h)
            h = tap(stage, h)
        h = tap("avgpool", model.avgpool(h))
        logits = model.fc(torch.flatten(h, 1))
        (gradient,) = torch.autograd.grad(logits[:, target].sum(), leaf["value"])
    return leaf["value"].detach(), gradient, logits.detach()
