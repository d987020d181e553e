"""timm, transformers and open_clip entries serve what their library computes, layer by layer, offline.

Each shipped entry from those libraries is served with ``LAYERTAP_WEIGHTS=pretrained`` from a
private Hugging Face cache that the tests fill (tests/checkpoints.py): the real loading path,
with the network cut off. The references are the library's own, built apart from the service
from the same files: its model, its own transform (timm's ``create_transform``, the image
processor, open_clip's ``image_transform``), its embedding call, its intermediates API
(``forward_intermediates``, ``output_hidden_states``) and a hook on every module that clones
the output when it fires (tests/reference.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.dataplane.plane import DataPlane
from service.dataplane.pooling import OutputOptions
from service.images.normalize import normalize
from service.modeling.entries import ModelEntry, load_entry
from tests.checkpoints import SOURCED
from tests.reference import every_call

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PHOTO = "grace_hopper.jpg"
BY_SOURCE = {
    source: [name for name in SOURCED if load_entry(DEFAULT_MODEL_REPOSITORY, name).source == source]
    for source in ("timm", "transformers", "open_clip")
}


class Library:
    """One entry's library, used directly: its model from the cached files, its transform, its calls."""

    def __init__(self, entry: ModelEntry, cache):
        self.entry = entry
        snapshot = next((cache / f"models--{self.repository.replace('/', '--')}" / "snapshots").iterdir())
        if entry.source == "timm":
            import timm
            import timm.data
            from timm.models import vision_transformer

            state = safetensors.torch.load_file(snapshot / "model.safetensors")
            size = {"input_size": (3, entry.input_size, entry.input_size)} if entry.input_size else {}
            name = f"{entry.architecture}.{entry.weights}"
            self.model = timm.create_model(name, pretrained=False, **({"img_size": entry.input_size} if size else {}))
            if size:  # timm's own way to load weights into a model made for another size
                state = vision_transformer.checkpoint_filter_fn(state, self.model)
            self.model.load_state_dict(state)
            self.transform = timm.data.create_transform(**timm.data.resolve_data_config(size, model=self.model))
            self.run = lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True)
        elif entry.source == "open_clip":
            import open_clip

            self.model = open_clip.create_model(entry.architecture)
            self.model.load_state_dict(safetensors.torch.load_file(snapshot / "open_clip_model.safetensors"))
            tag = open_clip.get_pretrained_cfg(entry.architecture, entry.weights)
            self.transform = open_clip.image_transform(
                self.model.visual.image_size, is_train=False, mean=tag["mean"], std=tag["std"],
                interpolation=tag["interpolation"], resize_mode=tag["resize_mode"],
            )  # fmt: skip
            self.run = lambda m, x: m.encode_image(x)
        else:
            import transformers

            config = transformers.AutoConfig.from_pretrained(snapshot)
            self.model = getattr(transformers, config.architectures[0]).from_pretrained(snapshot)
            processor = transformers.AutoImageProcessor.from_pretrained(snapshot)
            self.transform = lambda image: processor(images=image, return_tensors="pt")["pixel_values"][0]
            self.run = _transformers_embedding
        self.model.eval()

    @property
    def repository(self) -> str:
        if self.entry.source == "timm":
            import timm

            return timm.models.get_pretrained_cfg(f"{self.entry.architecture}.{self.entry.weights}").hf_hub_id
        if self.entry.source == "open_clip":
            import open_clip

            return open_clip.get_pretrained_cfg(self.entry.architecture, self.entry.weights)["hf_hub"].rstrip("/")
        return self.entry.architecture

    def input(self, data: bytes) -> torch.Tensor:
        return self.transform(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)


def _transformers_embedding(model, x):
    """transformers' image embedding: get_image_features' pooled (projected) output, else pooler_output."""
    if hasattr(model, "get_image_features"):
        return model.get_image_features(pixel_values=x).pooler_output
    return model(pixel_values=x).pooler_output


@pytest.fixture(scope="module", params=SOURCED)
def sourced(request, hub_cache):
    """(entry, plane serving it from the cache with exact preprocessing in float32, its Library, photo input)."""
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, request.param)
    settings = Settings(
        models=entry.name, weights="pretrained", allow_download=False, hub_cache=hub_cache,
        device="cpu", dtype="float32", preprocessing="exact",
    )  # fmt: skip  # the default output budget, which extract() enforces: every layer of one image must fit
    plane = DataPlane.from_settings(settings)
    plane.start()
    assert plane.wait_ready(300), plane.failure
    library = Library(entry, hub_cache)
    yield entry, plane, library
    plane.close()


def close(got: np.ndarray, expected: torch.Tensor, name: str, tolerance: float = 1e-4) -> None:
    """Equal up to float32 rounding of the same computation: ``tolerance`` of the layer's largest value."""
    expected = expected.detach().numpy()
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    scale = max(float(np.abs(expected).max()), 1e-6)
    error = float(np.abs(got - expected).max())
    assert error <= tolerance * scale + 1e-6, (name, error, scale)


@pytest.mark.parametrize("photo", ["grace_hopper.jpg", "rocket.jpg", "chelsea.png"])
def test_exact_preprocessing_equals_the_library_transform(sourced, photos, photo):
    entry, plane, library = sourced
    runner = plane.runner(None)
    spec = runner.entry.preprocessing
    ours = normalize(runner.preprocess(photos[photo])[None], spec.mean, spec.std, layout="nhwc")
    expected = library.input(photos[photo])
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().max()) < 1e-5, entry.name


def test_every_layer_is_the_value_its_module_returned(sourced, photos):
    _, plane, library = sourced
    runner = plane.runner(None)
    names = tuple(c.name for c in runner.layers)
    served = plane.extract([photos[PHOTO]], names).features
    expected = every_call(library.model, library.input(photos[PHOTO]), library.run)
    assert set(names) - {"embedding"} <= set(expected), set(names) - set(expected)
    assert len(names) > 50
    for name in names:
        if name != "embedding":
            close(served[name], expected[name], name)


def test_the_default_answer_is_the_library_embedding(sourced, photos):
    _, plane, library = sourced
    runner = plane.runner(None)
    assert runner.default_layer == "embedding" == runner.layers[-1].name
    served = plane.extract([photos[PHOTO], photos["rocket.jpg"]]).features["embedding"]
    x = torch.cat([library.input(photos[PHOTO]), library.input(photos["rocket.jpg"])])
    with torch.no_grad():
        expected = library.run(library.model, x)
    close(served, expected, "embedding")


@pytest.mark.parametrize("sourced", BY_SOURCE["timm"], indirect=True)
def test_timm_blocks_equal_forward_intermediates(sourced, photos):
    _, plane, library = sourced
    x = library.input(photos[PHOTO])
    with torch.no_grad():
        intermediates = library.model.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    runner = plane.runner(None)
    if hasattr(library.model, "blocks"):  # a ViT: its intermediates are the patches of each block, as a grid
        names = tuple(f"blocks.{i}" for i in range(len(library.model.blocks)))
    else:  # a CNN: each stage's output
        names = tuple(f"stages.{i}" for i in range(len(library.model.stages)))
    assert len(names) == len(intermediates)
    served = plane.extract([photos[PHOTO]], names).features
    for name, expected in zip(names, intermediates, strict=True):
        value = served[name]
        if value.ndim == 3:  # tokens → drop the class and register tokens, lay the patches out as a grid
            prefix = runner.prefix_tokens(name)
            assert prefix == library.model.num_prefix_tokens
            grid = expected.shape[2:]
            value = value[:, prefix:].reshape(1, *grid, -1).transpose(0, 3, 1, 2)
        close(value, expected, name)


@pytest.mark.parametrize("sourced", BY_SOURCE["transformers"], indirect=True)
def test_transformers_encoder_layers_equal_output_hidden_states(sourced, photos):
    _, plane, library = sourced
    x = library.input(photos[PHOTO])
    tower = getattr(library.model, "vision_model", library.model)
    with torch.no_grad():
        hidden = tower(pixel_values=x, output_hidden_states=True).hidden_states
    prefix = "vision_model.encoder.layers" if hasattr(library.model, "vision_model") else "encoder.layer"
    names = tuple(f"{prefix}.{i}" for i in range(len(hidden) - 1))
    served = plane.extract([photos[PHOTO]], names).features
    for i, name in enumerate(names):
        close(served[name], hidden[i + 1], name)


def test_pooling_by_layout_gives_what_the_library_pools(sourced, photos):
    """``pool=cls`` on the last norm is the library's class-token embedding; ``avg`` runs over patches only;
    a model without a class token refuses ``cls``."""
    entry, plane, library = sourced
    runner = plane.runner(None)
    image = [photos[PHOTO]]
    last_norm = {
        "dinov2_small_reg": "norm", "dinov2_small": "layernorm", "clip_vit_b32": "visual.ln_post",
        "siglip_base": "vision_model.post_layernorm", "convnextv2_tiny": "norm_pre",
    }[entry.name]  # fmt: skip
    tokens = plane.extract(image, (last_norm,)).features[last_norm]
    embedding = plane.extract(image).features["embedding"]
    if entry.name == "siglip_base":
        assert runner.prefix_tokens(last_norm) == 0 and tokens.shape[1] == 196
        with pytest.raises(Exception, match="has none: its tokens are all patches"):
            plane.check(None, (last_norm,), OutputOptions(pool="cls"))
        return
    if entry.name == "convnextv2_tiny":  # a map: avg over H, W is what the head pools before its norm
        pooled = plane.extract(image, (last_norm,), OutputOptions(pool="avg")).features[last_norm]
        np.testing.assert_allclose(pooled, tokens.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
        return
    cls = plane.extract(image, (last_norm,), OutputOptions(pool="cls")).features[last_norm]
    if entry.name == "clip_vit_b32":  # the class token after ln_post, projected, is encode_image
        cls = cls @ library.model.visual.proj.detach().numpy()
    close(cls, torch.from_numpy(embedding), "cls")
    prefix = runner.prefix_tokens(last_norm)
    assert prefix == {"dinov2_small_reg": 5}.get(entry.name, 1)
    average = plane.extract(image, (last_norm,), OutputOptions(pool="avg")).features[last_norm]
    np.testing.assert_allclose(average, tokens[:, prefix:].mean(axis=1), rtol=1e-5, atol=1e-6)


def test_open_clip_text_leaves_the_served_weights_frozen_and_equals_encode_text():
    """encode_text marks the text transformer's weights as requiring grad for the call only (a matmul speed
    workaround, service/modeling/sources/open_clip_models.py): the result is the library's, and after it the
    served network's parameters are frozen again."""
    open_clip = pytest.importorskip("open_clip")
    from service.modeling.sources.open_clip_models import encode_text

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    ids = open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat", "a diagram"])
    with torch.inference_mode():
        served = encode_text(model, ids, None)
        expected = model.encode_text(ids)
    torch.testing.assert_close(served, expected)
    assert not any(parameter.requires_grad for parameter in model.parameters())
