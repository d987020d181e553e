"""Checkpoints the tests make for timm, transformers and open_clip, placed where each library looks for them.

No test may reach the network, so a private Hugging Face hub cache holds, under the repository
ids and file names the libraries ask for, weights of the right architecture: seeded random ones,
perturbed so that no tensor keeps its init (LayerScale's 1e-5, zero heads) and every layer's value
means something. Configs and image processors are those of the real repositories, written by
``save_pretrained``. The cache layout is huggingface_hub's own: ``models--<org>--<name>/`` with
``refs/main`` naming a snapshot, and the files in ``snapshots/<commit>/``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.modeling.entries import ModelEntry, load_entry

# The shipped entries that come from another library than torchvision.
SOURCED = sorted(
    p.stem
    for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml")
    if load_entry(DEFAULT_MODEL_REPOSITORY, p.stem).source != "torchvision"
)


def perturbed(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """``model``'s state dict with seeded noise on every floating tensor, as a fresh, contiguous copy."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone().contiguous()
        if value.is_floating_point():
            value += torch.randn(value.shape, generator=generator) * 0.02
        state[key] = value
    return state


def put_in_cache(cache: Path, repository: str, files: Path) -> Path:
    """Copy the files of folder ``files`` into the hub cache as repository ``repository``'s main snapshot."""
    commit = hashlib.sha1(repository.encode()).hexdigest()
    root = cache / f"models--{repository.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(files, snapshot, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def fill_cache(cache: Path, entry: ModelEntry, work: Path) -> Path:
    """Put ``entry``'s pretrained weights (and config and processor) into ``cache``; the snapshot folder."""
    folder = work / entry.name
    folder.mkdir(parents=True, exist_ok=True)
    if entry.source == "timm":
        import timm

        name = f"{entry.architecture}.{entry.weights}"
        model = timm.create_model(name, pretrained=False)
        safetensors.torch.save_file(perturbed(model), folder / "model.safetensors")
        return put_in_cache(cache, model.pretrained_cfg["hf_hub_id"], folder)
    if entry.source == "open_clip":
        import open_clip

        model = open_clip.create_model(entry.architecture)
        safetensors.torch.save_file(perturbed(model), folder / "open_clip_model.safetensors")
        repository = open_clip.get_pretrained_cfg(entry.architecture, entry.weights)["hf_hub"].rstrip("/")
        return put_in_cache(cache, repository, folder)
    model, processor = transformers_model(entry.architecture)
    model.load_state_dict(perturbed(model))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if hasattr(model, "get_text_features"):
        text_tokenizer(entry.architecture, folder).save_pretrained(folder)
    return put_in_cache(cache, entry.architecture, folder)


# What the tokenizers the tests train learn from: enough words for texts to become several tokens each.
CORPUS = (
    "a photo of a cat",
    "a photo of a dog on a sofa",
    "a rocket on its launch pad at night",
    "Grace Hopper in her navy uniform",
    "a diagram of a neural network with many layers",
    "two grey cats asleep in the sun",
    "the quick brown fox jumps over the lazy dog",
)


def text_tokenizer(repository: str, folder: Path):
    """The tokenizer class the real repository ships, trained here on :data:`CORPUS` (the real vocabulary is a
    download): SigLIP's SentencePiece model, as ``spiece.model``."""
    import sentencepiece
    import transformers

    if repository != "google/siglip-base-patch16-224":
        raise ValueError(f"no test tokenizer for {repository}; add one here")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_prefix=str(folder / "spiece"), vocab_size=48,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip  # SigLIP's ids: </s> pads and ends every text
    return transformers.SiglipTokenizer(vocab_file=str(folder / "spiece.model"), model_max_length=64)


def transformers_model(repository: str):
    """A model and image processor with the real repository's configuration (small text towers: only images run)."""
    import transformers

    if repository == "facebook/dinov2-small":
        config = transformers.Dinov2Config(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518,
            layerscale_value=1.0, architectures=["Dinov2Model"],
        )  # fmt: skip
        processor = transformers.BitImageProcessor(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return transformers.Dinov2Model(config).eval(), processor
    if repository == "google/siglip-base-patch16-224":
        config = transformers.SiglipConfig(
            vision_config={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16,
                           "image_size": 224, "intermediate_size": 3072},
            text_config={"hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12, "vocab_size": 32000,
                         "intermediate_size": 3072, "max_position_embeddings": 64},
            architectures=["SiglipModel"],
        )  # fmt: skip
        processor = transformers.SiglipImageProcessor(
            size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            do_normalize=True, do_rescale=True,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return transformers.SiglipModel(config).eval(), processor
    raise ValueError(f"no test configuration for {repository}; add one here")
