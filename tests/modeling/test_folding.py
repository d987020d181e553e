"""Batch-norm folding: found from data flow, equal outputs on every layer it serves, refused when unsafe."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from service.dataplane.plane import DataPlane
from service.modeling.folding import find_conv_bn_pairs, fold_batch_norms
from service.modeling.tap import LayerTap
from service.runners.seams import ForwardChunk, RunnerSeams
from tests.reference import reference_outputs

SAMPLE = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def test_resnet18_pairs_are_every_conv_with_its_bn(reference_model):
    pairs = find_conv_bn_pairs(reference_model, SAMPLE)
    assert len(pairs) == 20  # stem + 8 blocks × 2 + 3 downsample shortcuts
    assert ("conv1", "bn1") in pairs
    assert ("layer1.0.conv2", "layer1.0.bn2") in pairs
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in pairs


def test_folded_model_equals_the_original_on_served_layers(reference_model):
    folded, changed = fold_batch_norms(copy.deepcopy(reference_model), SAMPLE)
    assert "bn1" in changed and "conv1" in changed and "layer1" not in changed
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 3, 112, 96, generator=torch.Generator().manual_seed(4))
    expected = reference_outputs(reference_model, x)
    served = ("relu", "maxpool", "layer1.0.relu", "layer1.0.relu_1", "layer1", "layer2.0", "layer3.1", "avgpool", "fc")
    tap = LayerTap(folded)
    with torch.inference_mode():
        captured = tap.capture(x, frozenset(served))
    for name in served:
        torch.testing.assert_close(captured[name], expected[name], rtol=1e-4, atol=1e-4, msg=name)


class ConvOutputUsedTwice(nn.Module):
    """conv → bn, but the conv's raw output is also added back: folding would change that sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(4.0)

    def forward(self, x):
        raw = self.conv(x)
        return self.bn(raw) + raw


def test_folding_is_refused_when_it_would_change_outputs():
    model = ConvOutputUsedTwice().eval()
    assert find_conv_bn_pairs(model, SAMPLE) == [("conv", "bn")]
    assert fold_batch_norms(model, SAMPLE) is None


def test_models_without_pairs_are_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    assert fold_batch_norms(model, SAMPLE) is None


@pytest.fixture(scope="module")
def watched(settings) -> Iterator[tuple[DataPlane, list[str]]]:
    """A plane whose runner says, before each pass, whether the folded copy ("fast") or the original runs it."""
    used: list[str] = []

    def which(chunk: ForwardChunk) -> None:
        folded = not any(isinstance(m, nn.BatchNorm2d) for m in chunk.module.modules())
        used.append("fast" if folded else "original")

    plane = DataPlane.from_settings(settings, seams=RunnerSeams(before_pass=which))
    plane.start()
    try:
        assert plane.wait_ready(60), plane.failure
        assert plane.describe()["fold_batch_norm"]
        yield plane, used
    finally:
        plane.close()


@pytest.mark.parametrize(
    ("layers", "expect_fast"),
    [(("avgpool",), True), (("layer2", "fc"), True), (("bn1",), False), (("layer1.0.conv2", "fc"), False)],
)
def test_runner_serves_from_the_folded_copy_only_when_no_folded_layer_is_wanted(watched, photos, layers, expect_fast):
    plane, used = watched
    used.clear()
    plane.extract([photos["rocket.jpg"]], layers)
    assert used == (["fast"] if expect_fast else ["original"])
