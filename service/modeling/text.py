"""Text towers: how a model that embeds text into its image space (CLIP, SigLIP) tokenizes and encodes text.

A model whose library gives it a text tower carries a :class:`TextTower` in its
:class:`~service.modeling.network.Network`; the others have none, and text sent to them is refused
by the data plane. A tower has three parts:

- ``tokenize(text, truncate)``, run in the request thread with the model's own tokenizer (open_clip's
  BPE tokenizer from its package, a transformers tokenizer from the files beside the weights: both
  offline). Every text becomes ``context_length`` ids padded as the tower was trained (CLIP pads
  with zeros after its end token, SigLIP to its maximum length). A text longer than that is
  refused with :class:`TooManyTokens` unless ``truncate``, when it is cut as the library cuts it.
- ``encode(model, ids, mask)``, run on the model thread: the library's own text embedding
  (open_clip's ``encode_text``, transformers' ``get_text_features``), unnormalized, ``(n, dim)``.
- ``context_length``: the most tokens a text may have, special tokens included.

The text embedding lives in the same space as the image embedding (the ``embedding`` layer), which
is what makes text-to-image search work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class TooManyTokens(ValueError):
    """A text with more tokens than the tower takes (the data plane turns it into the client's error)."""

    def __init__(self, tokens: int, limit: int):
        super().__init__(f"{tokens} tokens, over the text tower's context length of {limit}")
        self.tokens, self.limit = tokens, limit


@dataclass(frozen=True)
class TokenizedText:
    """One text as its tower reads it: ``context_length`` ids, the attention mask where the tower takes one, and
    how many tokens the text became (special tokens included; at most ``context_length``)."""

    ids: np.ndarray  # (context_length,) int64
    mask: np.ndarray | None  # (context_length,) int64, 1 for a token, 0 for padding
    tokens: int


@dataclass(frozen=True)
class TextTower:
    """A model's text tower: see the module's docstring."""

    context_length: int
    tokenize: Callable[[str, bool], TokenizedText]
    encode: Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]


def stack(texts: list[TokenizedText]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's ids and masks, ``(n, context_length)`` each (no mask when the tower takes none)."""
    ids = torch.from_numpy(np.stack([text.ids for text in texts]))
    masks = [text.mask for text in texts]
    mask = None if masks[0] is None else torch.from_numpy(np.stack(masks))
    return ids, mask
