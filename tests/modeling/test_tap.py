"""LayerTap against an independent forward pass: true values, repeated calls, early exit, one-time hooks."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from service.modeling.tap import LayerTap, call_name
from tests.reference import reference_outputs

GOLDEN_LAYERS = (
    "conv1",
    "bn1",
    "relu",
    "layer1.0.bn2",
    "layer1.0.relu",
    "layer1.0.relu_1",
    "layer2",
    "layer2.0.downsample",
    "layer3.1.bn1",
    "layer4",
    "avgpool",
    "fc",
)


@pytest.fixture
def tapped(reference_model):
    model = copy.deepcopy(reference_model)
    return model, LayerTap(model)


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("channels_last", [False, True])
def test_captured_outputs_equal_independent_forward(tapped, inputs, reference_model, channels_last):
    model, tap = tapped
    x = inputs
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    expected = reference_outputs(reference_model, inputs)
    with torch.inference_mode():
        captured = tap.capture(x, frozenset(GOLDEN_LAYERS))
    assert set(captured) == set(GOLDEN_LAYERS)
    for name in GOLDEN_LAYERS:
        assert captured[name].shape == expected[name].shape, name
        assert captured[name].is_contiguous(), name
        torch.testing.assert_close(captured[name], expected[name], rtol=1e-4, atol=1e-4, msg=name)


def test_in_place_ops_do_not_leak_into_captured_values(tapped, inputs, reference_model):
    """bn1 is followed by ReLU(inplace=True), bn2 by `out += identity`: a naive hook returns rewritten tensors."""
    model, tap = tapped
    naive: dict[str, torch.Tensor] = {}
    handles = [
        model.bn1.register_forward_hook(lambda m, i, o: naive.__setitem__("bn1", o)),
        model.layer1[0].bn2.register_forward_hook(lambda m, i, o: naive.__setitem__("layer1.0.bn2", o)),
    ]
    with torch.inference_mode():
        model(inputs)
    for handle in handles:
        handle.remove()
    with torch.inference_mode():
        captured = tap.capture(inputs, frozenset({"bn1", "layer1.0.bn2"}))
    expected = reference_outputs(reference_model, inputs)
    assert (expected["bn1"] < 0).any(), "a true batch-norm output has negative values"
    assert (naive["bn1"] >= 0).all(), "the naive reference was rewritten by the in-place ReLU"
    assert not torch.allclose(naive["layer1.0.bn2"], expected["layer1.0.bn2"])
    torch.testing.assert_close(captured["bn1"], expected["bn1"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(captured["layer1.0.bn2"], expected["layer1.0.bn2"], rtol=1e-4, atol=1e-4)


def test_reused_module_exposes_each_call(tapped, inputs):
    _, tap = tapped
    with torch.inference_mode():
        calls = tap.trace(inputs)
    relu_calls = [c for c in calls if c.module == "layer1.0.relu"]
    assert [c.name for c in relu_calls] == ["layer1.0.relu", "layer1.0.relu_1"]
    assert all(c.calls == 2 for c in relu_calls)
    assert [c.call_index for c in relu_calls] == [0, 1]
    assert call_name("x", 0) == "x" and call_name("x", 3) == "x_3"
    # every BasicBlock's relu runs twice; the stem's once
    assert sum(1 for c in calls if c.name.endswith(".relu_1")) == 8
    assert sum(1 for c in calls if c.name == "relu") == 1


def test_trace_matches_classic_resnet18_table():
    model = torchvision.models.resnet18(weights=None).eval()
    tap = LayerTap(model)
    with torch.inference_mode():
        calls = {c.name: c.shape for c in tap.trace(torch.zeros(10, 3, 28, 28))}
    assert calls["conv1"] == (10, 64, 14, 14)
    assert calls["maxpool"] == (10, 64, 7, 7)
    assert calls["layer1"] == (10, 64, 7, 7)
    assert calls["layer2"] == (10, 128, 4, 4)
    assert calls["layer3"] == (10, 256, 2, 2)
    assert calls["layer4"] == (10, 512, 1, 1)
    assert calls["avgpool"] == (10, 512, 1, 1)
    assert calls["fc"] == (10, 1000)


def test_forward_stops_once_everything_is_captured(tapped, inputs):
    model, tap = tapped
    ran: list[str] = []
    for name in ("layer1", "layer2", "layer4", "fc"):
        getattr(model, name).register_forward_pre_hook(lambda m, i, name=name: ran.append(name))
    with torch.inference_mode():
        tap.capture(inputs, frozenset({"layer1"}))
    assert ran == ["layer1"]
    ran.clear()
    with torch.inference_mode():
        tap.capture(inputs, frozenset({"layer1.0.relu", "layer2"}))
    assert ran == ["layer1", "layer2"]


def test_hooks_are_installed_once_and_idle_outside_captures(tapped, inputs):
    model, tap = tapped
    count = tap.hook_count
    assert count == sum(1 for name, _ in model.named_modules() if name)
    with torch.inference_mode():
        for layers in ({"fc"}, {"bn1"}, {"layer3", "avgpool"}):
            tap.capture(inputs, frozenset(layers))
        model(inputs)  # a forward pass that is not a capture leaves no state behind
    assert tap.hook_count == count


def test_the_hook_count_sees_hooks_registered_by_anyone():
    """/info's ``hooks`` must show a hook left behind anywhere, not only the tap's own."""
    model = torchvision.models.resnet18(weights=None)
    tap = LayerTap(model)
    count = tap.hook_count
    extra = [
        model.layer2.register_forward_hook(lambda *_: None),
        model.fc.register_forward_pre_hook(lambda *_: None),
        model.conv1.register_full_backward_hook(lambda *_: None),
    ]
    assert tap.hook_count == count + 3
    for handle in extra:
        handle.remove()
    assert tap.hook_count == count
    tap.remove()
    assert tap.hook_count == 0


def test_capture_rejects_empty_and_unknown_requests(tapped, inputs):
    _, tap = tapped
    with pytest.raises(ValueError, match="at least one layer"):
        tap.capture(inputs, frozenset())
    with torch.inference_mode(), pytest.raises(ValueError, match="no tensor output"):
        tap.capture(inputs, frozenset({"layer9"}))
