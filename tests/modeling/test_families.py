"""Every torchvision classifier starts and answers; each shipped family serves every layer's true value.

1. Every classification builder in ``torchvision.models`` gets a generated model entry (random
   weights, a small input where the architecture allows it) and must start, answer ``/shapes``
   at its size and at 200×200 (or a 400 saying why, for architectures that fix their input
   size), and ``/features`` with early exit. No answer may be a 5xx.
2. Each entry shipped in ``models/`` is compared, layer by layer, with two independent
   references on a real photo: a hook on every module that clones the output when it fires
   (tests/reference.py), and torchvision's ``create_feature_extractor`` for the layers whose
   value no later in-place op rewrites.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models.feature_extraction import create_feature_extractor

from service.app import create_app
from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.dataplane.pooling import OutputOptions
from service.modeling.entries import load_entry
from tests.conftest import encode, gradient_image, seeded_state_dict
from tests.reference import every_call

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

BUILDERS = torchvision.models.list_models(module=torchvision.models)
# The shipped torchvision entries (the other libraries' are tests/modeling/test_sources.py's).
SHIPPED = sorted(
    p.stem
    for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml")
    if load_entry(DEFAULT_MODEL_REPOSITORY, p.stem).source == "torchvision"
)
# Architectures that take only their own input size: /shapes at 200×200 is a 400 that says why.
FIXED_SIZE = {"maxvit_t", "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"}
# Smallest input that keeps the test fast; inception_v3 needs at least 75 pixels.
SMALL = {"inception_v3": 96} | dict.fromkeys(FIXED_SIZE, 224)


def answer(client, method: str, url: str, **kwargs):
    response = client.open(url, method=method, **kwargs)
    assert response.status_code < 500, (url, response.json)
    return response


@pytest.mark.parametrize("architecture", BUILDERS)
def test_every_classification_builder_starts_and_answers(architecture, tmp_path):
    side = SMALL.get(architecture, 64)
    weights = torchvision.models.get_model_weights(architecture).DEFAULT
    (tmp_path / f"{architecture}.toml").write_text(
        f'architecture = "{architecture}"\nweights = "{weights}"\n[preprocessing]\nresize = {side}\ncrop = {side}\n'
        "mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\n"
    )
    settings = Settings(models=architecture, model_repository=tmp_path, weights="random", device="cpu", dtype="float32")
    app = create_app(settings)
    plane = app.extensions["layertap.dataplane"]
    try:
        assert plane.wait_ready(300), plane.failure
        client = app.test_client()
        info = answer(client, "GET", "/info").json
        layers = answer(client, "GET", "/shapes").json["layers"]
        assert len(layers) == info["layers"] > 0 and layers[0]["shape"][0] == 1
        assert {info["default_layer"], info["classifier"]} <= {layer["name"] for layer in layers}
        other = answer(client, "GET", "/shapes?height=200&width=200&batch=2")
        if architecture in FIXED_SIZE:
            assert other.status_code == 400 and "cannot take a 200×200 input" in other.json["error"]["message"]
        else:
            assert other.status_code == 200 and other.json["layers"][-1]["shape"][0] == 2
        image = encode(gradient_image(90, 70), "PNG")
        first = layers[0]["name"]  # early exit: only the first module runs
        early = answer(client, "POST", f"/features?layers={first}", data=image, content_type="image/png")
        assert early.status_code == 200 and early.json["features"][first]["shape"] == layers[0]["shape"]
        default = answer(client, "POST", "/features?pool=avg", data=image, content_type="image/png")
        assert default.status_code == 200 and list(default.json["features"]) == [info["default_layer"]]
        cam = answer(client, "POST", "/explain?method=gradcam", data=image, content_type="image/png")
        if info["spatial_layers"]:  # at the model's last spatial layer, whatever its layout
            assert cam.status_code == 200 and cam.json["layer"] == info["spatial_layers"][-1], cam.json
        else:
            assert cam.status_code == 400 and "no layer with a spatial map" in cam.json["error"]["message"]
    finally:
        plane.close()


# ---- shipped entries against independent references ------------------------------------------
@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request, tmp_path_factory, photos):
    """(entry, plane serving it with seeded weights and exact preprocessing, reference model, input tensor)."""
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, request.param)
    state_dict = seeded_state_dict(entry.architecture)
    path = tmp_path_factory.mktemp("weights") / f"{entry.name}.pt"
    torch.save(state_dict, path)
    settings = Settings(models=entry.name, weights=str(path), device="cpu", dtype="float32", preprocessing="exact")
    app = create_app(settings)
    plane = app.extensions["layertap.dataplane"]
    assert plane.wait_ready(300), plane.failure
    reference = torchvision.models.get_model(entry.architecture, weights=None)
    reference.load_state_dict(state_dict)
    transform = torchvision.models.get_weight(entry.weights).transforms()
    x = transform(Image.open(io.BytesIO(photos["grace_hopper.jpg"])).convert("RGB")).unsqueeze(0)
    yield entry, plane, reference.eval(), x
    plane.close()


def close(got: np.ndarray, expected: torch.Tensor, name: str) -> None:
    expected = expected.numpy()
    assert got.shape == expected.shape, name
    scale = max(float(np.abs(expected).max()), 1e-6)
    assert float(np.abs(got - expected).max()) <= 2e-3 * scale + 1e-5, name


def test_every_layer_is_the_value_its_module_returned(shipped, photos):
    _, plane, reference, x = shipped
    names = tuple(c.name for c in plane.runner(None).layers)
    served = plane.extract([photos["grace_hopper.jpg"]], names).features
    expected = every_call(reference, x)
    assert set(names) <= set(expected)
    for name in names:
        close(served[name], expected[name], name)


def test_in_place_and_reused_modules_are_covered(shipped):
    """The comparison above would catch the classic hook bugs: check each family has such a layer."""
    entry, plane, _, _ = shipped
    calls = plane.runner(None).layers
    reused = [c.name for c in calls if c.call_index > 0]
    norms = [c.name for c in calls if c.type in ("BatchNorm2d", "LayerNorm", "LayerNorm2d")]
    assert norms, entry.name
    if entry.architecture.startswith("resnet"):
        assert reused, "ResNet-style blocks call their ReLU more than once"
    if entry.architecture == "vit_b_16":
        attention = [c for c in calls if c.type == "MultiheadAttention"]
        assert len(attention) == 12 and all(c.shape == (1, 197, 768) for c in attention)


# Layers that a later in-place op rewrites, and that op: create_feature_extractor returns the
# rewritten tensor there (DenseNet's forward applies F.relu(features, inplace=True)), layertap the true one.
REWRITTEN_IN_PLACE = {("densenet121", "features"): torch.relu}


def test_feature_extractor_agrees_where_no_in_place_op_follows(shipped, photos):
    entry, plane, reference, x = shipped
    runner = plane.runner(None)
    top = [c.name for c in runner.layers if "." not in c.name and c.type not in ("Conv2d", "BatchNorm2d")]
    nodes = [name for name in dict.fromkeys([*top, runner.default_layer, runner.classifier])]
    extractor = create_feature_extractor(reference, return_nodes=nodes)
    with torch.no_grad():
        expected = extractor(x)
    served = plane.extract([photos["grace_hopper.jpg"]], tuple(nodes)).features  # the folded twin where it applies
    for name in nodes:
        rewrite = REWRITTEN_IN_PLACE.get((entry.name, name))
        if rewrite is None:
            close(served[name], expected[name], name)
        else:  # the extractor's value is the rewritten one; ours, rewritten the same way, equals it
            close(rewrite(torch.from_numpy(served[name])).numpy(), expected[name], name)
            assert (served[name] < 0).any(), f"{name} must be the value before the in-place op"


def test_layouts_make_pooling_mean_what_the_model_computes(shipped, photos):
    """Pooling a layer by its declared layout gives the vector the model itself computes from it."""
    entry, plane, reference, x = shipped
    runner = plane.runner(None)
    for call in runner.layers:  # a square input: the two spatial sides of a 4-D output are equal
        layout = runner.layout_of(call.name)
        if len(call.shape) == 4 and layout == "nchw":
            assert call.shape[2] == call.shape[3], (call.name, call.shape)
        elif len(call.shape) == 4 and layout == "nhwc":
            assert call.shape[1] == call.shape[2], (call.name, call.shape)
        elif layout == "tokens":
            assert call.shape[1] == 197, (call.name, call.shape)
    # Every shipped entry: (layer, pool, the layer whose value the model computes from that pooled vector, and
    # how). DenseNet has no such layer (a functional ReLU comes between its features and its pooling): its
    # max pool is compared with torch's over the reference's own features instead.
    pairs = {
        "resnet18": ("layer4", "avg", "avgpool", None),
        "resnet50": ("layer4", "avg", "avgpool", None),
        "mobilenet_v3_large": ("features", "avg", "avgpool", None),
        "efficientnet_b0": ("features", "avg", "avgpool", None),
        "regnet_y_400mf": ("trunk_output", "avg", "avgpool", None),
        "convnext_tiny": ("features", "avg", "avgpool", None),
        "swin_t": ("norm", "avg", "flatten", None),
        "vit_b_16": ("encoder", "cls", "heads", "heads"),
        "densenet121": ("features", "max", None, None),
    }
    layer, pool, target, then = pairs[entry.name]  # a new shipped entry needs its pair here
    image = [photos["grace_hopper.jpg"]]
    pooled = plane.extract(image, (layer,), OutputOptions(pool=pool)).features[layer]
    with torch.no_grad():
        if then is not None:  # the class token is what the head reads
            pooled = getattr(reference, then)(torch.from_numpy(pooled)).numpy()
        if target is None:
            expected = torch.amax(reference.get_submodule(layer)(x), dim=(2, 3)).numpy()
        else:
            expected = plane.extract(image, (target,)).features[target].reshape(1, -1)
    np.testing.assert_allclose(pooled.reshape(1, -1), expected, rtol=1e-4, atol=1e-4)


# ResNet18's maps are compared, layer by layer and method by method, in tests/explain/test_explain.py.
@pytest.mark.parametrize("shipped", [name for name in SHIPPED if name != "resnet18"], indirect=True)
def test_class_activation_maps_at_each_family_equal_pytorch_grad_cam(shipped, photos):
    """Each shipped family's last spatial layer, channels first or last (Swin), against the library.

    Grad-CAM can be all zero (the ReLU keeps nothing: seeded weights do that on MobileNetV3);
    LayerCAM, which keeps only positive gradients, rarely is: both are compared."""
    from pytorch_grad_cam import GradCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.reference import cosine

    entry, plane, reference, x = shipped
    runner = plane.runner(None)
    layer = runner.spatial_layers[-1]
    channels_last = runner.layout_of(layer) == "nhwc"
    reshape = (lambda t: t.permute(0, 3, 1, 2)) if channels_last else None
    module = reference.get_submodule(next(c.module for c in runner.layers if c.name == layer))
    for method, library in (("gradcam", GradCAM), ("layercam", LayerCAM)):
        (ours,) = plane.explain([photos["grace_hopper.jpg"]], method, layer).explanations
        with library(model=reference, target_layers=[module], reshape_transform=reshape) as cam:
            theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(ours.target)])[0]
        # An all-zero Grad-CAM must be all zero on both sides; LayerCAM never is, so it is always compared.
        assert bool(ours.upsampled.any()) == bool(theirs.any()), (entry.name, method)
        assert method == "gradcam" or ours.upsampled.any(), (entry.name, "LayerCAM should not be all zero")
        if ours.upsampled.any():
            assert cosine(ours.upsampled, theirs) >= 0.999, (entry.name, layer, method, cosine(ours.upsampled, theirs))
