"""The layer catalogue on its own: which names a model serves, the hints for the others, layouts, int8 names, roles."""

from __future__ import annotations

import dataclasses

import pytest

from service.core.errors import LayerUnavailable, UnknownLayer
from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.modeling.build import build_network
from service.modeling.entries import load_entry
from service.modeling.int8 import Int8Model
from service.modeling.shapes import ShapeTracer
from service.modeling.weights import resolve_weights
from service.runners.catalogue import LayerCatalogue


def traced(name: str, size: int = 224):
    """The entry and its model's calls at ``size``, traced on the meta device as a runner does."""
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, name)
    tracer = ShapeTracer(build_network(entry, resolve_weights("random", entry)))
    return entry, tracer


@pytest.fixture(scope="module")
def resnet():
    entry, tracer = traced("resnet18")
    return LayerCatalogue(entry, tracer.trace(1, 224, 224)), tracer


def test_resnet18_serves_its_tensor_calls_in_return_order_with_its_roles(resnet):
    catalogue, _ = resnet
    names = [c.name for c in catalogue.layers]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-2:] == ["avgpool", "fc"]
    assert "layer1.0.relu_1" in catalogue and "layer9" not in catalogue and len(catalogue) == len(names)
    assert (catalogue.classifier, catalogue.default_layer, catalogue.classes) == ("fc", "avgpool", 1000)
    assert catalogue.spatial_layers[-1] == "layer4" and "avgpool" not in catalogue.spatial_layers
    assert catalogue.layout_of("layer4") == "nchw" and catalogue.call_of("relu") == "relu"
    assert catalogue.of_modules({"layer1.0.relu", "bn1"}) == {"layer1.0.relu", "layer1.0.relu_1", "bn1"}


def test_unknown_names_get_close_matches_and_the_top_level_layers(resnet):
    catalogue, _ = resnet
    catalogue.check(("fc", "layer1.0.relu_1"))
    with pytest.raises(UnknownLayer, match=r"unknown layer 'layer3\.1x' of resnet18; did you mean 'layer3\.1'"):
        catalogue.check(("fc", "layer3.1x"))
    with pytest.raises(UnknownLayer, match=r"its top-level layers are conv1, bn1, relu, maxpool, layer1, .*, fc;"):
        catalogue.check(("nothing_like_it",))


def test_a_trace_at_another_size_is_filtered_to_the_served_layers(resnet):
    catalogue, tracer = resnet
    served = catalogue.served(tracer.trace(2, 320, 256))
    assert [c.name for c in served] == [c.name for c in catalogue.layers]
    assert dict((c.name, c.shape) for c in served)["layer4"] == (2, 512, 10, 8)


def test_int8_names_map_to_the_calls_that_carry_them_and_fused_ones_say_where_they_went(resnet):
    catalogue, tracer = resnet
    everything = {c.name: c.name for c in catalogue.layers}
    served = {**{k: v for k, v in everything.items() if k not in ("conv1", "bn1")}, "relu": "conv1"}
    int8 = Int8Model(model=None, served=served, unavailable={"bn1": "fused into relu"})
    quantized = LayerCatalogue(catalogue.entry, tracer.trace(1, 224, 224), int8)
    assert "bn1" not in quantized and "conv1" not in quantized and quantized.call_of("relu") == "conv1"
    with pytest.raises(LayerUnavailable, match="layer 'bn1' does not exist in int8 mode: fused into relu"):
        quantized.check(("bn1",))
    with pytest.raises(UnknownLayer):
        quantized.check(("conv1",))
    assert (quantized.classifier, quantized.default_layer) == ("fc", "avgpool")


def test_layouts_and_roles_come_from_the_entry():
    entry, tracer = traced("vit_b_16")
    catalogue = LayerCatalogue(entry, tracer.trace(1, 224, 224))
    assert (catalogue.classifier, catalogue.default_layer, len(catalogue)) == ("heads", "encoder", 139)
    assert (catalogue.layout_of("encoder"), catalogue.layout_of("conv_proj")) == ("tokens", "nchw")
    assert catalogue.spatial_layers == ["conv_proj"]
    chosen = LayerCatalogue(dataclasses.replace(entry, default_layer="encoder.ln"), tracer.trace(1, 224, 224))
    assert chosen.default_layer == "encoder.ln"
