"""Hugging Face transformers' vision models: the class the model's config names, with its image processor.

``architecture`` is a hub id or a local folder (a ``save_pretrained`` one) whose ``config.json``
defines the network; ``weights`` the hub id, with an optional ``@revision``, whose weights are
loaded for ``pretrained`` (by default the same id). The model is built as the class that the
config names in ``architectures`` (``CLIPModel``, ``SiglipModel``, ``Dinov2Model``), not a bare
``AutoModel``, which would drop CLIP's projection: layer names are module names under it
(``vision_model.encoder.layers.11``, ``visual_projection``). Both towers of CLIP and SigLIP are
kept; images run the image tower.

The pass is the model's own embedding: ``get_image_features`` where the model has it (the
projected ``image_embeds`` of CLIP, SigLIP's pooled head), else its ``image_embeds`` or
``pooler_output``, served as ``embedding``. Preprocessing is the image processor saved with the
model, as ``AutoImageProcessor`` loads it (torchvision backend: tensor resize, floored crop).

Text runs the text tower of models that have one (``get_text_features``: CLIP, SigLIP;
service/modeling/text.py), with the tokenizer saved beside the weights (``AutoTokenizer``), padded
to the tower's context length as SigLIP was trained. A model whose tokenizer cannot be loaded
serves images only, and says why in the log.

A repository that ships its own Python code (``auto_map``) is refused unless
``LAYERTAP_TRUST_REMOTE_CODE`` is on: ``trust_remote_code`` runs that code in the service.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from service.core.errors import StartupError
from service.images.recipe import INTERPOLATIONS, Preprocessing
from service.modeling.entries import ModelEntry
from service.modeling.loading import load_file, seeded
from service.modeling.network import EMBEDDING, Network
from service.modeling.sources.hub import hub_access
from service.modeling.text import TextTower, TokenizedText, TooManyTokens
from service.modeling.weights import Weights

log = logging.getLogger("layertap.models")

# PIL's resampling numbers, which image processors save as "resample".
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}

# Its "Loading weights" bar is a line of terminal control codes in every worker's log, at every start.
transformers.utils.logging.disable_progress_bar()


def build(entry: ModelEntry, weights: Weights) -> Network:
    source, revision = (weights.folder, {}) if weights.folder is not None else _split(entry.architecture)
    hub = weights.hub
    options = {"trust_remote_code": hub.trust_remote_code, "cache_dir": hub.cache_dir}
    with hub_access(hub, f"transformers model {source}"):
        config = transformers.AutoConfig.from_pretrained(source, **options, **revision)
        model_class = _model_class(config, hub.trust_remote_code)
        if weights.folder is not None:
            model = model_class.from_pretrained(weights.folder, **options)
        elif weights.pretrained is not None:
            repository, weights_revision = _split(weights.pretrained)
            model = model_class.from_pretrained(repository, **options, **weights_revision)
        elif model_class is transformers.AutoModel:
            model = seeded(weights, lambda: model_class.from_config(config, trust_remote_code=hub.trust_remote_code))
        else:
            model = seeded(weights, lambda: model_class(config))
        processor = transformers.AutoImageProcessor.from_pretrained(source, **options, **revision)
    if weights.state_dict is not None:
        load_file(model, entry, weights)
    vision = getattr(config, "vision_config", config)
    return Network(
        model=model,
        preprocessing=preprocessing(processor),
        run=embed,
        output=EMBEDDING,
        prefix_tokens=prefix_tokens(model),
        patch_size=getattr(vision, "patch_size", None),
        text=_text_tower(entry, model, source, {**options, "local_files_only": not hub.allow_download}, revision)
        if hasattr(model, "get_text_features")
        else None,
    )


def _text_tower(entry: ModelEntry, model: nn.Module, source: str, options: dict, revision: dict) -> TextTower | None:
    """The tokenizer saved with the model, and ``get_text_features``; None (logged) when there is no tokenizer.
    ``options`` say ``local_files_only`` when downloads are off: without it, transformers asks the hub for
    optional files (``chat_template.jinja``) and retries for half a minute on a machine with no network."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **options, **revision)
    except Exception as exc:  # noqa: BLE001 - not cached, no tokenizer files, a missing tokenizer library
        log.warning("model %s serves images only: its tokenizer cannot be loaded (%s)", entry.name, exc)
        return None
    return text_tower(tokenizer, model.config)


def text_tower(tokenizer, config) -> TextTower:
    """``tokenizer`` and ``get_text_features``; the context length is the text tower's position count, or the
    tokenizer's limit where that is smaller."""
    text_config = getattr(config, "text_config", config)
    limit = int(getattr(text_config, "max_position_embeddings", None) or tokenizer.model_max_length)
    limit = min(limit, int(tokenizer.model_max_length or limit))

    def tokenize(text: str, truncate: bool) -> TokenizedText:
        tokens = len(tokenizer(text, truncation=False)["input_ids"])
        if tokens > limit and not truncate:
            raise TooManyTokens(tokens, limit)
        encoded = tokenizer(text, padding="max_length", max_length=limit, truncation=True, return_tensors="np")
        mask = encoded.get("attention_mask")
        return TokenizedText(
            ids=encoded["input_ids"][0].astype(np.int64),
            mask=None if mask is None else mask[0].astype(np.int64),
            tokens=min(tokens, limit),
        )

    return TextTower(context_length=limit, tokenize=tokenize, encode=encode_text)


def encode_text(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The model's text embedding, as the library defines it (CLIP's projected ``text_embeds``, SigLIP's)."""
    output = model.get_text_features(input_ids=ids, attention_mask=mask)
    return _embedding_of(output, "text_embeds", f"{type(model).__name__}.get_text_features")


def embed(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's image embedding, as the library defines it."""
    if hasattr(model, "get_image_features"):
        output = model.get_image_features(pixel_values=inputs)
    else:
        output = model(pixel_values=inputs)
    return _embedding_of(output, "image_embeds", f"{type(model).__name__} (name a default_layer in its entry)")


def _embedding_of(output, field: str, what: str) -> torch.Tensor:
    """A call's embedding: the tensor it returned, or its ``field`` (projected), else its ``pooler_output``."""
    if isinstance(output, torch.Tensor):
        return output
    for name in (field, "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"{what} returns neither {field} nor pooler_output")


def prefix_tokens(model: nn.Module) -> int:
    """The tokens before the patches: a class token (``cls_token``, ``class_embedding``) and register tokens."""
    count = 0
    for name, parameter in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("cls_token", "class_embedding") and "text" not in name:
            count = max(count, 1)
        elif leaf == "register_tokens":
            count += parameter.shape[1]
    return count


def preprocessing(processor) -> Preprocessing:
    """The image processor's resize, crop, rescale and normalization, as a recipe."""
    size = dict(processor.size or {})
    crop = dict(getattr(processor, "crop_size", None) or {})
    resample = processor.resample
    interpolation = RESAMPLE.get(int(resample), None) if isinstance(resample, int) else getattr(resample, "value", None)
    if interpolation not in INTERPOLATIONS or not processor.do_resize or not processor.do_normalize:
        raise StartupError(
            f"{type(processor).__name__} ({processor.to_dict()}) has no recipe; give the entry a [preprocessing]"
        )
    if abs(float(processor.rescale_factor) * 255 - 1) > 1e-6 or not processor.do_rescale:
        raise StartupError(f"{type(processor).__name__} does not rescale to [0, 1]; give the entry a [preprocessing]")
    if size.get("shortest_edge"):
        resize, mode = int(size["shortest_edge"]), "shorter"
    elif size.get("height") and size.get("height") == size.get("width"):
        resize, mode = int(size["height"]), "squash"
    else:
        raise StartupError(f"{type(processor).__name__}'s size {size} has no recipe; give the entry a [preprocessing]")
    side = crop.get("height", resize) if getattr(processor, "do_center_crop", False) else resize
    return Preprocessing(
        resize=resize,
        crop=int(side),
        interpolation=interpolation,
        mean=tuple(float(v) for v in processor.image_mean),
        std=tuple(float(v) for v in processor.image_std),
        resize_mode=mode,
        resampler="torch" if getattr(processor, "backend", "torchvision") == "torchvision" else "pillow",
        crop_rounding="floor",
    )


def _model_class(config, trust_remote_code: bool):
    """The class ``architectures`` names, from transformers itself; AutoModel when none is named or the class
    is the repository's own code (which AutoModel loads only when trusted)."""
    for name in config.architectures or ():
        model_class = getattr(transformers, name, None)
        if model_class is not None:
            return model_class
    if getattr(config, "auto_map", None) and not trust_remote_code:
        raise StartupError(
            "this model's class is code shipped with it (auto_map), which layertap does not run unless "
            "LAYERTAP_TRUST_REMOTE_CODE=true"
        )
    return transformers.AutoModel


def _split(identifier: str) -> tuple[str, dict]:
    """``org/name@revision`` → (``org/name``, its from_pretrained arguments); a folder stays whole."""
    if "@" in identifier and not Path(identifier).exists():
        repository, revision = identifier.split("@", 1)
        return repository, {"revision": revision}
    return identifier, {}
