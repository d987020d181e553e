"""OpenAI's embeddings API on the real server, through clients nobody here wrote: ``openai`` and LangChain's.

``server`` serves ResNet18 (images only); ``sourced_server`` serves CLIP ViT-B/32 from open_clip (images
and text) and DINOv2 from transformers (images only), pretrained from a cache the tests filled. The
references are independent: ``/features`` for images, and open_clip's own model, tokenizer,
``encode_image`` and ``encode_text`` built from the same files for CLIP.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import openai
import pytest
import requests
import torch
from langchain_openai import OpenAIEmbeddings
from PIL import Image

from tests.modeling.test_sources import Library

pytestmark = pytest.mark.integration

TEXTS = ["a photo of a rocket", "a grey cat asleep on a sofa", "Grace Hopper in uniform"]


def client(server, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, **options)


def data_url(photo: bytes, media_type: str = "image/jpeg") -> str:
    return f"data:{media_type};base64,{base64.b64encode(photo).decode()}"


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def features(server, photo: bytes, query: str = "") -> np.ndarray:
    answer = requests.post(f"{server.url}/features?encoding=base64&{query}", data=photo, timeout=60).json()
    (layer,) = answer["features"].values()
    return np.frombuffer(base64.b64decode(layer["data"]), "<f4")


@pytest.fixture(scope="module")
def clip(hub_cache):
    """open_clip's own CLIP, from the files the server serves, and its tokenizer."""
    import open_clip

    from service.core.settings import DEFAULT_MODEL_REPOSITORY
    from service.modeling.entries import load_entry

    library = Library(load_entry(DEFAULT_MODEL_REPOSITORY, "clip_vit_b32"), hub_cache)
    return library, open_clip.get_tokenizer("ViT-B-32")


def test_models_are_listed_and_retrieved(sourced_server):
    listed = client(sourced_server).models.list()
    assert [m.id for m in listed.data] == ["clip_vit_b32", "dinov2_small"]
    assert {m.owned_by for m in listed.data} == {"open_clip", "transformers"}
    assert client(sourced_server).models.retrieve("dinov2_small").id == "dinov2_small"
    with pytest.raises(openai.NotFoundError, match="GET /v1/models lists them"):
        client(sourced_server).models.retrieve("gpt-4o")


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_image_embeddings_equal_features_and_are_unit_length(server, photos, encoding_format):
    """Numbers, or base64 of little-endian float32 (which the client decodes itself only when it chose base64:
    asked for explicitly, it hands the string over)."""
    names = ["rocket.jpg", "chelsea.png"]
    answer = client(server).embeddings.create(
        model="resnet18",
        input=[data_url(photos[n], "image/jpeg" if n.endswith("jpg") else "image/png") for n in names],
        encoding_format=encoding_format,
    )
    assert answer.model == "resnet18" and [d.index for d in answer.data] == [0, 1]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 2  # an image counts as one token
    for name, item in zip(names, answer.data, strict=True):
        embedding = item.embedding
        if encoding_format == "base64":
            assert isinstance(embedding, str)
            embedding = np.frombuffer(base64.b64decode(embedding), "<f4")
        vector = np.asarray(embedding, np.float64)
        assert vector.shape == (512,)
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
        assert cosine(vector, features(server, photos[name])) >= 0.9999


def test_the_default_encoding_is_base64_and_equals_float(server, photos):
    """What the official client sends when nobody says (base64), against what a plain HTTP caller gets (float)."""
    sent = {}
    photo = data_url(photos["rocket.jpg"])

    def record(request):
        sent["body"] = request.content

    import httpx

    http = httpx.Client(event_hooks={"request": [record]})
    via_client = client(server, http_client=http).embeddings.create(model="resnet18", input=photo)
    assert b'"encoding_format":"base64"' in sent["body"].replace(b" ", b"")
    plain = requests.post(f"{server.url}/v1/embeddings", json={"model": "resnet18", "input": photo}, timeout=60)
    assert plain.status_code == 200 and plain.json()["data"][0]["embedding"][:1] != []
    np.testing.assert_allclose(via_client.data[0].embedding, plain.json()["data"][0]["embedding"], rtol=1e-6)


def test_layers_pool_and_raw_vectors(server, photos):
    photo = data_url(photos["chelsea.png"], "image/png")
    raw = client(server).embeddings.create(
        model="resnet18", input=photo, encoding_format="float", extra_body={"layers": "layer4", "pool": "avg",
                                                                            "normalize": False},
    )  # fmt: skip
    expected = features(server, photos["chelsea.png"], "layers=layer4&pool=avg")
    np.testing.assert_allclose(raw.data[0].embedding, expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(raw.data[0].embedding) > 2, "normalize: false returns the vector as computed"


def test_clip_text_equals_encode_text_and_images_equal_encode_image(sourced_server, clip, photos):
    library, tokenizer = clip
    answer = client(sourced_server).embeddings.create(
        model="clip_vit_b32", input=[TEXTS[0], data_url(photos["rocket.jpg"]), TEXTS[1]]
    )
    vectors = [np.asarray(d.embedding) for d in answer.data]
    with torch.no_grad():
        text = library.model.encode_text(tokenizer([TEXTS[0], TEXTS[1]]))
        image = library.model.encode_image(library.input(photos["rocket.jpg"]))
    assert cosine(vectors[0], text[0]) >= 0.999 and cosine(vectors[2], text[1]) >= 0.999
    assert cosine(vectors[1], image[0]) >= 0.9999
    # CLIP's BPE: a start and an end token around each text's tokens; the image counts one
    assert answer.usage.prompt_tokens == sum(len(tokenizer.encode(t)) + 2 for t in TEXTS[:2]) + 1


def test_text_and_images_of_clip_land_in_one_space(sourced_server, clip, photos):
    """The similarities the server's vectors give are the ones open_clip's own forward pass gives (its normalized
    image and text features, the basis of its logits): text and images are in one space."""
    library, tokenizer = clip
    names = ["rocket.jpg", "grace_hopper.jpg"]
    answer = client(sourced_server).embeddings.create(
        model="clip_vit_b32", input=[*TEXTS, *(data_url(photos[n]) for n in names)]
    )
    vectors = np.asarray([d.embedding for d in answer.data])
    served = vectors[len(TEXTS) :] @ vectors[: len(TEXTS)].T
    with torch.no_grad():
        images = torch.cat([library.input(photos[n]) for n in names])
        image_features, text_features, _ = library.model(images, tokenizer(TEXTS))
    np.testing.assert_allclose(served, (image_features @ text_features.T).numpy(), atol=2e-3)


def test_langchain_embeds_text_through_the_same_endpoint(sourced_server, clip):
    library, tokenizer = clip
    embeddings = OpenAIEmbeddings(
        model="clip_vit_b32", base_url=f"{sourced_server.url}/v1", api_key="unused",
        check_embedding_ctx_length=False, max_retries=0,
    )  # fmt: skip
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query("a rocket on its launch pad")
    with torch.no_grad():
        expected = library.model.encode_text(tokenizer(TEXTS))
    assert len(documents) == 3 and len(query) == 512
    for got, reference in zip(documents, expected, strict=True):
        assert cosine(got, reference) >= 0.999


def test_text_over_the_context_is_refused_unless_truncated(sourced_server, clip):
    library, tokenizer = clip
    long_text = "cat " * 100  # 100 tokens, over CLIP's 77
    with pytest.raises(openai.BadRequestError, match=r'over the 77 .*"truncate": true'):
        client(sourced_server).embeddings.create(model="clip_vit_b32", input=long_text)
    answer = client(sourced_server).embeddings.create(
        model="clip_vit_b32", input=long_text, extra_body={"truncate": True}
    )
    with torch.no_grad():
        expected = library.model.encode_text(tokenizer([long_text]))  # open_clip cuts at 77 with an end token
    assert cosine(answer.data[0].embedding, expected[0]) >= 0.999
    assert answer.usage.prompt_tokens == 77


def test_text_to_a_model_without_a_text_tower_names_the_ones_that_take_it(sourced_server):
    with pytest.raises(openai.BadRequestError, match=r"has no text tower.*take text here: clip_vit_b32") as caught:
        client(sourced_server).embeddings.create(model="dinov2_small", input="a cat")
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["code"] == "text_unsupported"


def test_errors_come_in_openai_s_shape_and_the_client_s_classes(server, photos):
    photo, text_url = data_url(photos["rocket.jpg"]), "data:text/plain;base64,aGk="
    cases = [
        (openai.NotFoundError, {"model": "gpt-4", "input": photo}, "model_not_found"),
        (openai.BadRequestError, {"model": "resnet18", "input": "https://example.com/a.jpg"}, "bad_request"),
        (openai.BadRequestError, {"model": "resnet18", "input": [[1, 2, 3]]}, "bad_request"),
        (openai.BadRequestError, {"model": "resnet18", "input": photo, "dimensions": 3}, "bad_request"),
        (openai.APIStatusError, {"model": "resnet18", "input": text_url}, "unsupported_media_type"),
        (openai.BadRequestError, {"model": "resnet18", "input": "data:image/png;base64,aGVsbG8="}, "invalid_image"),
    ]
    for error, body, code in cases:
        with pytest.raises(error) as caught:
            client(server).embeddings.create(**body)
        assert set(caught.value.body) == {"message", "type", "param", "code"} and caught.value.body["code"] == code
    with pytest.raises(openai.APIStatusError) as caught:  # 413: the server takes 8 images
        tiny = io.BytesIO()
        Image.new("RGB", (8, 8)).save(tiny, "PNG")
        client(server).embeddings.create(model="resnet18", input=[data_url(tiny.getvalue(), "image/png")] * 9)
    assert caught.value.status_code == 413 and "the limit is 8" in caught.value.message
    assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200


def test_requests_are_counted_under_their_route_and_described_in_the_openapi_document(server, photos):
    client(server).embeddings.create(model="resnet18", input=data_url(photos["rocket.jpg"]))
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    assert 'layertap_requests_total{endpoint="/v1/embeddings",method="POST",status="200"}' in metrics
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    assert {"/v1/embeddings", "/v1/models", "/v1/models/{model}"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert {"EmbeddingsRequest", "EmbeddingsResponse", "OpenAIError"} <= set(schemas)
