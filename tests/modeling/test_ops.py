"""Op layers (service/modeling/ops.py): true values taken as each op returns, named as torch.fx names them.

References are computed independently: by hand from module outputs (ResNet's residual sums, DenseNet's
head, a ViT block's residual), by torch.fx's own interpreter with every node's value cloned as the node
runs, and by ``create_feature_extractor``, whose difference where an in-place op follows is asserted.
"""

from __future__ import annotations

import copy
import operator

import pytest
import torch
import torchvision
from torch.nn import functional as F
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from service.modeling.network import call_module
from service.modeling.ops import OpNamer, op_kind, op_name
from service.modeling.shapes import meta_copy
from service.modeling.tap import LayerTap
from tests.reference import reference_outputs


def op_sites(model: torch.nn.Module, namer: OpNamer, size: int = 224, run=call_module) -> dict:
    """Each op layer's site, traced on a weightless copy of ``model``, as the runner does."""
    tracer = LayerTap(meta_copy(model), run, ops=namer)
    with torch.inference_mode():
        traced = tracer.trace(torch.empty(1, 3, size, size, device="meta"), ops=True)
    return {call.name: call.site for call in traced if call.op is not None}


def op_tap(model: torch.nn.Module, size: int = 224, source: str = "torchvision", run=call_module) -> LayerTap:
    """A tap serving ``model``'s op layers, run as ``run(model, inputs)``; ``tap.ops`` is its OpNamer."""
    namer = OpNamer(meta_copy(model), source)
    return LayerTap(model, run, ops=namer, sites=op_sites(model, namer, size, run).get)


def seeded(builder: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(builder).eval()


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def test_op_names_follow_fx():
    assert op_name(torch.Tensor.__iadd__) == "add"  # `out += identity` is FX's `add`
    assert op_name(torch.Tensor.__radd__) == "add"
    assert op_name(torch.Tensor.add_) == "add"
    assert op_name(torch.flatten) == "flatten"
    assert op_name(F.adaptive_avg_pool2d) == "adaptive_avg_pool2d"
    assert op_name(torch.Tensor.__getitem__) == "getitem"
    assert op_kind(torch.Tensor.flatten) == "method"
    assert op_kind(torch.flatten) == "function"
    assert op_kind(torch.Tensor.__add__) == "function"  # FX records operators as operator.add


def test_resnet_residual_sums_are_taken_before_the_relu_that_rewrites_them(reference_model, inputs):
    """``out += identity`` is followed by ReLU(inplace=True): the served sum is the pre-ReLU one."""
    model = copy.deepcopy(reference_model)
    tap = op_tap(model)
    expected = reference_outputs(reference_model, inputs)
    with torch.inference_mode():
        captured = tap.capture(inputs, frozenset({"layer1.0.add", "layer4.1.add", "flatten"}))
    torch.testing.assert_close(captured["layer1.0.add"], expected["layer1.0.bn2"] + expected["maxpool"])
    torch.testing.assert_close(captured["layer4.1.add"], expected["layer4.1.bn2"] + expected["layer4.0"])
    assert captured["layer1.0.add"].min() < 0  # really before the ReLU
    torch.testing.assert_close(captured["flatten"], expected["avgpool"].flatten(1))


def test_create_feature_extractor_agrees_except_where_an_in_place_op_follows(reference_model, inputs):
    model = copy.deepcopy(reference_model)
    tap = op_tap(model)
    names = ["layer1.0.add", "layer4.1.add", "flatten"]
    with torch.inference_mode():
        ours = tap.capture(inputs, frozenset(names))
        theirs = create_feature_extractor(copy.deepcopy(reference_model), names)(inputs)
    torch.testing.assert_close(ours["flatten"], theirs["flatten"])
    # FX's add is then rewritten in place by the block's ReLU: it returns relu(sum), we return the sum
    for name in ("layer1.0.add", "layer4.1.add"):
        torch.testing.assert_close(torch.relu(ours[name]), theirs[name])
        assert not torch.equal(ours[name], theirs[name])


def test_densenet_head_is_served_as_its_functions_compute_it(inputs):
    model = seeded("densenet121")
    tap = op_tap(model)
    with torch.inference_mode():
        captured = tap.capture(inputs, frozenset({"features", "relu", "adaptive_avg_pool2d", "flatten"}))
        scores = model(inputs)
    features = captured["features"]
    torch.testing.assert_close(captured["relu"], torch.relu(features))
    torch.testing.assert_close(captured["adaptive_avg_pool2d"], torch.relu(features).mean((2, 3), keepdim=True))
    torch.testing.assert_close(captured["flatten"], torch.relu(features).mean((2, 3)))
    # flatten is exactly what the classifier reads
    with torch.inference_mode():
        torch.testing.assert_close(model.classifier(captured["flatten"]), scores)


def test_a_vit_encoder_blocks_residual_add(inputs):
    model = seeded("vit_b_16")
    tap = op_tap(model)
    block = "encoder.layers.encoder_layer_3"
    wanted = {f"{block}.add", f"{block}.getitem", "encoder.layers.encoder_layer_2", f"{block}.mlp", f"{block}.add_1"}
    with torch.inference_mode():
        captured = tap.capture(inputs[:1], frozenset(wanted))
        block_input = captured["encoder.layers.encoder_layer_2"]
        attention, _ = model.encoder.layers[3].self_attention(*[model.encoder.layers[3].ln_1(block_input)] * 3)
    torch.testing.assert_close(captured[f"{block}.getitem"], attention)  # x, _ = self.self_attention(...)
    torch.testing.assert_close(captured[f"{block}.add"], attention + block_input)
    torch.testing.assert_close(captured[f"{block}.add_1"], captured[f"{block}.add"] + captured[f"{block}.mlp"])


def test_asking_for_an_early_op_never_runs_later_stages(reference_model, inputs):
    model = copy.deepcopy(reference_model)
    tap = op_tap(model)
    ran: list[str] = []
    for name in ("layer1", "layer2", "fc"):
        getattr(model, name).register_forward_pre_hook(lambda m, i, name=name: ran.append(name))
    with torch.inference_mode():
        tap.capture(inputs, frozenset({"layer1.0.add"}))
    assert ran == ["layer1"]


def test_a_pass_without_op_layers_watches_no_op(reference_model, inputs):
    """No mode and no scope hooks until an op layer is asked for; then the hooks are registered once."""
    model = copy.deepcopy(reference_model)
    tap = op_tap(model)
    before = tap.hook_count
    with torch.inference_mode():
        tap.capture(inputs, frozenset({"layer2"}))
        assert tap.hook_count == before
        assert torch._C._is_torch_function_mode_enabled() is False
        tap.capture(inputs, frozenset({"layer1.0.add"}))
        after_first = tap.hook_count
        tap.capture(inputs, frozenset({"layer2.0.add"}))
    assert after_first > before and tap.hook_count == after_first


def test_mixed_module_and_op_layers_equal_each_alone(reference_model, inputs):
    model = copy.deepcopy(reference_model)
    tap = op_tap(model)
    with torch.inference_mode():
        together = tap.capture(inputs, frozenset({"layer2", "layer2.1.add", "layer1.0.relu_1"}))
        alone = {name: tap.capture(inputs, frozenset({name}))[name] for name in together}
    for name, value in together.items():
        torch.testing.assert_close(value, alone[name])


def test_an_op_layer_can_be_a_gradient_leaf(reference_model, inputs):
    """Explanations read op layers too: the leaf holds the sum, and the pass goes on from a copy of it."""
    model = copy.deepcopy(reference_model)
    tap = op_tap(model)
    with torch.enable_grad():
        scores, leaf = tap.capture_for_gradient(inputs[:1], "layer4.1.add")
        (gradient,) = torch.autograd.grad(scores[0, 3], leaf)
    expected = reference_outputs(reference_model, inputs[:1])
    torch.testing.assert_close(scores, expected["fc"])
    torch.testing.assert_close(leaf.detach(), expected["layer4.1.bn2"] + expected["layer4.0"])
    assert gradient.shape == leaf.shape and gradient.abs().sum() > 0


class _CloningInterpreter(torch.fx.Interpreter):
    """torch.fx's interpreter, keeping a copy of each node's value as the node runs (later in-place ops
    cannot rewrite it)."""

    def __init__(self, module):
        super().__init__(module)
        self.values: dict = {}

    def run_node(self, node):
        value = super().run_node(node)
        self.values[node.name] = value.clone() if isinstance(value, torch.Tensor) else value
        return value


def fx_op_values(model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, object]:
    """Each function and method node's value, by get_graph_node_names' name, from FX's own interpreter."""
    from torchvision.models import feature_extraction

    tracer = feature_extraction.NodePathTracer(**feature_extraction._set_default_tracer_kwargs(None))
    graph = tracer.trace(model.eval())
    interpreter = _CloningInterpreter(torch.fx.GraphModule(tracer.root, graph))
    with torch.inference_mode():
        interpreter.run(inputs)
    return {
        tracer.node_to_qualname[node]: interpreter.values[node.name]
        for node in graph.nodes
        if node.op in ("call_function", "call_method")
    }


# torchvision's functions wrapped with torch.fx.wrap: FX records one node for the whole function, while the
# eager pass sees only the ops inside it. Their values are module outputs already (the attention module
# returns shifted_window_attention's result) or tables made from the weights, so they are not op layers.
FX_WRAPPED = ("shifted_window_attention", "_get_relative_position_bias", "_patch_merging_pad")

CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)
INPUT_SIZE = {"inception_v3": 299}


def _weightless(builder: str) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(builder).eval()
    except Exception:  # noqa: BLE001 - RegNet's constructor computes with tensors, which the meta device cannot
        return meta_copy(torchvision.models.get_model(builder))


@pytest.mark.parametrize("builder", CLASSIFIERS)
def test_served_op_names_are_fxs_function_and_method_nodes(builder):
    """Every tensor-valued function and method node get_graph_node_names lists is an op layer of the same
    name, with the shape FX's interpreter gives it; the nodes that are not are listed with the reason."""
    model = _weightless(builder)
    size = INPUT_SIZE.get(builder, 224)
    x = torch.empty(1, 3, size, size, device="meta")
    fx_names = get_graph_node_names(model)[1]
    values = fx_op_values(model, x)
    assert set(values) <= set(fx_names)
    tensors = {name: value for name, value in values.items() if isinstance(value, torch.Tensor)}
    # Not layers: tuples (their elements are, as the getitem nodes that read them), sizes and other numbers.
    assert all(not isinstance(v, torch.Tensor) for name, v in values.items() if name not in tensors)
    expected = {name for name in tensors if not name.rsplit(".", 1)[-1].startswith(FX_WRAPPED)}
    with torch.inference_mode():
        served = {c.name: c for c in LayerTap(model, ops=OpNamer(model)).trace(x, ops=True) if c.op is not None}
    assert set(served) == expected, (sorted(expected - set(served))[:10], sorted(set(served) - expected)[:10])
    for name in expected:
        assert served[name].shape == tuple(tensors[name].shape), name


@pytest.mark.parametrize("builder", ["resnet18", "densenet121", "shufflenet_v2_x0_5", "maxvit_t", "swin_t"])
def test_served_op_values_equal_fxs_interpreter_where_no_in_place_op_follows(builder, inputs):
    """Values, not just names: each op layer equals FX's interpreter's value of the node, cloned as it ran,
    on a real input, except the sums an in-place op rewrites in FX's graph (asserted above for ResNet)."""
    model = seeded(builder)
    x = inputs[:1]
    fx = {name: v for name, v in fx_op_values(model, x).items() if isinstance(v, torch.Tensor)}
    tap = op_tap(model)
    names = [name for name in fx if not name.rsplit(".", 1)[-1].startswith(FX_WRAPPED)]
    with torch.inference_mode():
        served = tap.capture(x, frozenset(names))
    for name in names:
        torch.testing.assert_close(served[name], fx[name], rtol=1e-4, atol=1e-4, msg=name)


def test_getitem_nodes_read_an_element_of_a_tuple():
    assert operator.getitem.__name__ == "getitem"
    model = seeded("shufflenet_v2_x0_5")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tap = op_tap(model)
    with torch.inference_mode():
        captured = tap.capture(x, frozenset({"stage2.1.getitem", "stage2.1.getitem_1", "stage2.0"}))
    first, second = captured["stage2.0"].chunk(2, dim=1)  # x1, x2 = x.chunk(2, dim=1)
    torch.testing.assert_close(captured["stage2.1.getitem"], first)
    torch.testing.assert_close(captured["stage2.1.getitem_1"], second)


def test_a_timm_blocks_residual_adds_carry_timms_fx_names():
    timm = pytest.importorskip("timm")
    from timm.models import get_graph_node_names as timm_node_names

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    tap = op_tap(model, 224, "timm", lambda m, x: m.forward_features(x))
    assert tap.ops.traced, tap.ops.failure
    names = {"blocks.0", "blocks.1.ls1", "blocks.1.ls2", "blocks.1.add", "blocks.1.add_1"}
    assert {"blocks.1.add", "blocks.1.add_1"} <= set(timm_node_names(model)[1])  # timm's own FX names
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        captured = tap.capture(x, frozenset(names))
    # x = x + drop_path1(ls1(attn(norm1(x)))); x = x + drop_path2(ls2(mlp(norm2(x))))
    torch.testing.assert_close(captured["blocks.1.add"], captured["blocks.0"] + captured["blocks.1.ls1"])
    torch.testing.assert_close(captured["blocks.1.add_1"], captured["blocks.1.add"] + captured["blocks.1.ls2"])


def test_a_transformers_layers_adds_are_named_in_call_order_where_fx_cannot_trace():
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    torch.manual_seed(0)
    model = transformers.Dinov2Model(config).eval()
    tap = op_tap(model, 56, "transformers", lambda m, x: m(pixel_values=x).last_hidden_state)
    assert not tap.ops.traced  # torchvision's tracer cannot trace it: names come from call order
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    names = {"embeddings", "encoder.layer.0.layer_scale1", "encoder.layer.0.layer_scale2"}
    ops = {"encoder.layer.0.add", "encoder.layer.0.add_1"}
    with torch.inference_mode():
        captured = tap.capture(x, frozenset(names | ops))
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    first = captured["embeddings"] + captured["encoder.layer.0.layer_scale1"]  # attention's residual
    torch.testing.assert_close(captured["encoder.layer.0.add"], first)
    torch.testing.assert_close(captured["encoder.layer.0.add_1"], first + captured["encoder.layer.0.layer_scale2"])
    torch.testing.assert_close(captured["encoder.layer.0.add_1"], hidden[1])  # the layer's output, as the library says


def test_naming_ops_beside_a_model_thread_serving_passes(reference_model, inputs):
    """torch.fx patches every module's __call__ while it traces: another thread's passes must not notice."""
    import threading

    model = copy.deepcopy(reference_model)
    tap = LayerTap(model)
    with torch.inference_mode():
        expected = tap.capture(inputs[:1], frozenset({"layer3", "fc"}))
    failures: list[BaseException] = []
    stop = threading.Event()

    def serve() -> None:
        with torch.inference_mode():
            while not stop.is_set():
                try:
                    got = tap.capture(inputs[:1], frozenset({"layer3", "fc"}))
                    torch.testing.assert_close(got["fc"], expected["fc"])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    failures.append(exc)
                    return

    server = threading.Thread(target=serve)
    server.start()
    try:
        for builder in ("densenet121", "swin_t", "resnet50"):
            assert OpNamer(_weightless(builder)).traced
    finally:
        stop.set()
        server.join()
    assert not failures, failures[0]


def test_an_op_site_that_no_longer_matches_the_pass_fails_loudly(reference_model, inputs):
    """Sites are traced once; a pass that calls another op there is refused, never served another tensor."""
    from dataclasses import replace

    model = copy.deepcopy(reference_model)
    namer = OpNamer(meta_copy(model))
    wrong = replace(op_sites(model, namer)["layer1.0.add"], op="mul")
    tap = LayerTap(model, ops=namer, sites={"layer1.0.add": wrong}.get)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="traced as 'mul'"):
        tap.capture(inputs[:1], frozenset({"layer1.0.add"}))


def test_early_exit_is_not_swallowed_by_a_models_own_except_exception():
    class Careful(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.second_ran = False

        def forward(self, x):
            try:
                x = self.first(x) + 1
            except Exception:  # noqa: BLE001 - what some model code does
                pass
            self.second_ran = True
            return self.second(x)

    model = Careful().eval()
    tap = LayerTap(model, ops=OpNamer(meta_copy(model)), sites=None)
    with torch.inference_mode():
        captured = tap.capture(torch.ones(1, 4), frozenset({"first"}))
    assert not model.second_ran and set(captured) == {"first"}
