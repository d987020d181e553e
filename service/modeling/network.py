"""A built model, and how a forward pass runs it: what the model's library gives the runner.

torchvision's classifiers run as ``model(x)``, and their embedding is a module's output (``avgpool``).
The other libraries define the embedding as a call of their own (timm's ``forward_head(...,
pre_logits=True)``, transformers' ``pooler_output`` or ``image_embeds``, open_clip's
``encode_image``), which is not always any module's output. For them the forward pass *is* that
call, and its result is served as the layer :data:`EMBEDDING`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from service.images.recipe import Preprocessing
from service.modeling.text import TextTower

# The name the library's embedding call is served under, for models whose pass is that call.
EMBEDDING = "embedding"

Run = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def call_module(model: nn.Module, inputs: torch.Tensor):
    """The pass of a plain classifier: the module's own forward."""
    return model(inputs)


@dataclass(frozen=True)
class Network:
    """A model in eval mode, float32, on the CPU, with no gradients on its parameters, and what goes with it.

    ``run(model, inputs)`` is its forward pass (it takes the model, so that a copy of it, moved or
    folded, runs the same way); ``output``: the name its result is served under (:data:`EMBEDDING`), or
    None when the result is not a layer of its own (a classifier's scores are its last module's output).
    ``prefix_tokens``: the tokens before the patches in its token layers (CLS, registers); ``patch_size``:
    the side of a patch, for the models that have patches; ``text``: its text tower, for the models that
    embed text into the space of their image embedding (CLIP, SigLIP; service/modeling/text.py).
    """

    model: nn.Module
    preprocessing: Preprocessing
    run: Run = call_module
    output: str | None = None
    prefix_tokens: int = 0
    patch_size: int | None = None
    text: TextTower | None = None

    def grid(self, height: int, width: int) -> tuple[int, int] | None:
        """The patch grid (rows, columns) of an input of this size; None for a model without patches."""
        if self.patch_size is None:
            return None
        return height // self.patch_size, width // self.patch_size
