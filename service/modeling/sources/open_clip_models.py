"""open_clip's models: ``open_clip.create_model`` for the entry's model name and pretrained tag.

``architecture`` is an open_clip model name (``ViT-B-32``) and ``weights`` a pretrained tag
(``laion2b_s34b_b79k``); the tag also decides the preprocessing (mean, std, interpolation, resize
mode), in every weights mode. Both towers are kept, as ``create_model`` returns them: layer names
are ``visual.transformer.resblocks.11``, ``visual.ln_post``; images run the image tower.

The pass is ``encode_image``, served as ``embedding``. Preprocessing is open_clip's ``preprocess``:
resize (the shorter side, or ``squash``), center crop, normalize.

Text runs the text tower (service/modeling/text.py): open_clip's own tokenizer for the model
(``get_tokenizer``: CLIP's BPE vocabulary ships in the package), then ``encode_text``.
"""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from service.core.errors import StartupError
from service.images.recipe import Preprocessing
from service.modeling.entries import ModelEntry
from service.modeling.loading import close_names, load_file, seeded
from service.modeling.network import EMBEDDING, Network
from service.modeling.sources.hub import hub_access
from service.modeling.text import TextTower, TokenizedText, TooManyTokens
from service.modeling.weights import Weights

RESIZE_MODES = {"shortest": "shorter", "squash": "squash"}


def build(entry: ModelEntry, weights: Weights) -> Network:
    if weights.folder is not None:
        with hub_access(weights.hub, f"open_clip model folder {weights.folder}"):
            model = open_clip.create_model(f"local-dir:{weights.folder}", load_weights=True)
    else:
        _check_names(entry)
        if weights.pretrained is not None:
            with hub_access(weights.hub, f"open_clip weights {entry.architecture} {entry.weights}"):
                model = open_clip.create_model(
                    entry.architecture, pretrained=entry.weights, cache_dir=weights.hub.cache_dir
                )
        else:
            tag = _pretrained_config(entry)
            overrides = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
            model = seeded(
                weights, lambda: open_clip.create_model(entry.architecture, force_preprocess_cfg=overrides or None)
            )
            if weights.state_dict is not None:
                load_file(model, entry, weights)
    visual = model.visual
    name = f"local-dir:{weights.folder}" if weights.folder is not None else entry.architecture
    with hub_access(weights.hub, f"open_clip tokenizer of {name}"):
        tokenizer = open_clip.get_tokenizer(name, cache_dir=weights.hub.cache_dir)
    return Network(
        model=model,
        preprocessing=preprocessing(visual.preprocess_cfg),
        run=embed,
        output=EMBEDDING,
        prefix_tokens=1 if isinstance(getattr(visual, "class_embedding", None), torch.Tensor) else 0,
        patch_size=_side(getattr(visual, "patch_size", None)),
        text=text_tower(tokenizer) if hasattr(model, "encode_text") else None,
    )


def text_tower(tokenizer) -> TextTower:
    """open_clip's tokenizer and ``encode_text``; the context length is the tokenizer's (77 for CLIP)."""
    limit = int(tokenizer.context_length)

    def tokenize(text: str, truncate: bool) -> TokenizedText:
        if hasattr(tokenizer, "sot_token_id") and hasattr(tokenizer, "encode"):  # CLIP's BPE: start, text, end
            tokens = len(tokenizer.encode(text)) + 2
        else:  # a tokenizer from the hub: count what it makes of the text without a limit
            tokens = int((tokenizer([text], context_length=1 << 16)[0] != tokenizer.pad_token_id).sum())
        if tokens > limit and not truncate:
            raise TooManyTokens(tokens, limit)
        return TokenizedText(ids=tokenizer([text])[0].numpy(), mask=None, tokens=min(tokens, limit))

    return TextTower(context_length=limit, tokenize=tokenize, encode=encode_text)


def encode_text(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:  # noqa: ARG001
    """open_clip's text embedding, unnormalized (``encode_text(ids, normalize=False)``); it takes no mask.

    The text transformer's weights are marked as requiring grad for the call. Its attention gets a float
    causal mask, so PyTorch's fast path is off, and the slow path projects a transposed ``(L, N, E)``
    view; ``matmul`` folds that view into one 2-D product only when the weight requires grad, and
    otherwise copies the weight once per position (CLIP ViT-B/32, 16 texts, bf16, 2 cores: 2.1 s
    against 0.21 s). Under the runner's ``inference_mode`` no graph is recorded either way.
    """
    frozen = [parameter for parameter in model.transformer.parameters() if not parameter.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(True)
    try:
        return model.encode_text(ids)
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)


def embed(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """open_clip's image embedding, unnormalized (``encode_image(x, normalize=False)``)."""
    return model.encode_image(inputs)


def preprocessing(config: dict) -> Preprocessing:
    """open_clip's evaluation ``preprocess`` for this configuration, as a recipe."""
    size = _side(config["size"])
    mode = config.get("resize_mode", "shortest")
    if mode not in RESIZE_MODES:
        raise StartupError(f"open_clip's resize_mode {mode!r} is not supported; give the entry a [preprocessing]")
    return Preprocessing(
        resize=size,
        crop=size,
        interpolation=config.get("interpolation", "bicubic"),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        resize_mode=RESIZE_MODES[mode],
    )


def _check_names(entry: ModelEntry) -> None:
    known = open_clip.list_models()
    if entry.architecture not in known:
        raise StartupError(f"model entry {entry.name!r}: {close_names(entry.architecture, known, 'open_clip')}")
    tags = open_clip.list_pretrained_tags_by_model(entry.architecture)
    if entry.weights and entry.weights not in tags:
        raise StartupError(
            f"model entry {entry.name!r}: open_clip has no pretrained tag {entry.weights!r} for {entry.architecture}; "
            f"its tags are {', '.join(tags) or 'none'}"
        )


def _pretrained_config(entry: ModelEntry) -> dict:
    return open_clip.get_pretrained_cfg(entry.architecture, entry.weights) if entry.weights else {}


def _side(size) -> int | None:
    if size is None:
        return None
    return int(size[0] if isinstance(size, tuple | list) else size)
