"""Text through the data plane (service/dataplane/text.py): each model's own tokenizer and text tower, offline.

CLIP from open_clip and SigLIP from transformers are served from a cache the tests filled
(tests/checkpoints.py: their real configurations, seeded weights, and for SigLIP a SentencePiece
model trained here in place of the real vocabulary). The references are the libraries' own: the
tokenizer, ``encode_text`` or ``get_text_features``, and for SigLIP its forward pass's logits, which
put text and images in one space.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from service.core.errors import InvalidRequest, TextTooLong, TextUnsupported
from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.dataplane.plane import DataPlane
from service.dataplane.pooling import OutputOptions
from service.modeling.entries import load_entry
from tests.modeling.test_sources import Library, close

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

TEXTS = ["a photo of a cat", "a rocket on its launch pad at night", "two grey cats asleep in the sun"]


@pytest.fixture(scope="module")
def plane(hub_cache):
    settings = Settings(
        models="clip_vit_b32,siglip_base,dinov2_small", weights="pretrained", allow_download=False,
        hub_cache=hub_cache, device="cpu", dtype="float32", preprocessing="exact",
    )  # fmt: skip
    plane = DataPlane.from_settings(settings)
    plane.start()
    assert plane.wait_ready(300), plane.failure
    yield plane
    plane.close()


@pytest.fixture(scope="module")
def siglip(hub_cache):
    """transformers' own SigLIP and the tokenizer saved beside it, from the files the plane serves."""
    import transformers

    library = Library(load_entry(DEFAULT_MODEL_REPOSITORY, "siglip_base"), hub_cache)
    snapshot = next((hub_cache / "models--google--siglip-base-patch16-224" / "snapshots").iterdir())
    return library, transformers.AutoTokenizer.from_pretrained(snapshot)


def test_models_with_a_text_tower_say_so(plane):
    assert plane.text_models == ["clip_vit_b32", "siglip_base"]
    assert plane.describe("clip_vit_b32")["text"] == {"context_length": 77}
    assert plane.describe("siglip_base")["text"] == {"context_length": 64}
    assert plane.describe("dinov2_small")["text"] is None


def test_clip_text_is_open_clip_s_encode_text(plane, hub_cache):
    import open_clip

    library = Library(load_entry(DEFAULT_MODEL_REPOSITORY, "clip_vit_b32"), hub_cache)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    embedded = plane.embed_text(TEXTS, "clip_vit_b32")
    with torch.no_grad():
        expected = library.model.encode_text(tokenizer(TEXTS))
    close(embedded.vectors, expected, "clip text")
    assert embedded.tokens == [len(tokenizer.encode(text)) + 2 for text in TEXTS]


def test_siglip_text_is_get_text_features_padded_to_its_length(plane, siglip):
    library, tokenizer = siglip
    embedded = plane.embed_text(TEXTS, "siglip_base")
    # As transformers' SigLIP documentation calls it: padded to the maximum length, with what the tokenizer returns
    inputs = tokenizer(TEXTS, padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        output = library.model.get_text_features(**inputs)
    expected = output if isinstance(output, torch.Tensor) else output.pooler_output
    close(embedded.vectors, expected, "siglip text")
    assert embedded.tokens == [len(tokenizer(text)["input_ids"]) for text in TEXTS]


def test_siglip_text_and_images_land_in_one_space(plane, siglip, photos):
    """Normalized, the served vectors' similarities are those behind SigLIP's own logits (scale · cos + bias)."""
    library, tokenizer = siglip
    names = ["rocket.jpg", "chelsea.png"]
    images = plane.extract([photos[n] for n in names], options=OutputOptions(normalize=True), model="siglip_base")
    images = images.features["embedding"]
    texts = plane.embed_text(TEXTS, "siglip_base", normalize=True).vectors
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)
    inputs = tokenizer(TEXTS, padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        output = library.model(**inputs, pixel_values=torch.cat([library.input(photos[n]) for n in names]))
    scale, bias = library.model.logit_scale.exp(), library.model.logit_bias
    cosines = ((output.logits_per_image - bias) / scale).detach().numpy()
    np.testing.assert_allclose(images.reshape(2, -1) @ texts.T, cosines, atol=1e-4)


def test_a_text_over_the_context_is_refused_unless_truncated(plane, siglip):
    library, tokenizer = siglip
    long_text = " ".join(["cat"] * 200)
    with pytest.raises(TextTooLong, match=r"text 1 is \d+ tokens, over the 64 that model siglip_base"):
        plane.embed_text(["a cat", long_text], "siglip_base")
    embedded = plane.embed_text([long_text], "siglip_base", truncate=True)
    inputs = tokenizer([long_text], padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        output = library.model.get_text_features(**inputs)
    expected = output if isinstance(output, torch.Tensor) else output.pooler_output
    close(embedded.vectors, expected, "truncated")
    assert embedded.tokens == [64]


def test_a_model_without_a_text_tower_names_those_with_one(plane):
    with pytest.raises(TextUnsupported, match="take text here: clip_vit_b32, siglip_base"):
        plane.embed_text(["a cat"], "dinov2_small")
    with pytest.raises(InvalidRequest, match="no text to embed"):
        plane.embed_text([], "clip_vit_b32")


def test_many_texts_go_in_chunks_and_batch_with_others(plane):
    """More texts than a request may hold images: they go to the model thread chunk by chunk, in order."""
    texts = [f"a photo of {n} cats" for n in range(70)]  # 70 > LAYERTAP_MAX_IMAGES_PER_REQUEST (32)
    together = plane.embed_text(texts, "clip_vit_b32").vectors
    alone = np.concatenate([plane.embed_text([text], "clip_vit_b32").vectors for text in texts[::23]])
    np.testing.assert_allclose(together[::23], alone, rtol=1e-4, atol=1e-5)
