"""Op layers: the outputs of functional ops and tensor methods (``layer1.0.add``, DenseNet's ``flatten``), named.

Much of what a network computes is no module's output: ResNet's residual sum (``out += identity``),
DenseNet's head (``F.relu`` → ``adaptive_avg_pool2d`` → ``flatten``), a ``torch.cat``. The tap
(service/modeling/tap.py) sees these calls as the model runs, eagerly, through a
:class:`torch.overrides.TorchFunctionMode`, and copies an op's result the moment it returns; this
module says what each call is called.

**Names are torch.fx's**, as ``torchvision.models.feature_extraction.get_graph_node_names`` gives
them in eval mode, where torch.fx can trace the model: the graph is traced once (symbolically; FX
never computes what is served), and each scope's op calls, as the tap saw them, are matched in
order to the graph's function and method nodes of that scope (the enclosing module's qualified
name) by op name: the longest common subsequence, so that a call FX did not record (an op on a
constant tensor, run at trace time) or a node the pass cannot see (arithmetic on sizes) does not
shift the others. A node that reads one element of a call's result (``q, k, v = x.chunk(3)``,
``x, _ = self.attn(...)``) is served as that element.

Where torch.fx cannot trace the model, an op call is named ``<enclosing module>.<op>``, the
k-th (k ≥ 1) call of the same op in the same module ``<enclosing module>.<op>_<k>``, in call
order, as module calls are named.

Ops inside a *leaf* module (torch.nn's modules, torchvision's ops, timm's untraceable ones: the
modules FX does not trace through) are that module's own computation and are not op layers; the
module's output is the layer.
"""

from __future__ import annotations

import inspect
import math
import operator
import threading
from dataclasses import dataclass

import torch
from torch import nn

from service.core.text import first_line

# Python operators whose reflected (``__radd__``) and in-place (``__iadd__``) forms FX records as the plain one.
BINARY_OPERATORS = frozenset("add sub mul floordiv truediv div mod pow lshift rshift and or xor matmul".split())
FUNCTION, METHOD = "function", "method"
# torch.fx saves and restores torch.nn.Module.__call__ around a trace: two traces at once would restore each
# other's patch, and leave one in place for good. One trace at a time, in the whole process.
_TRACING = threading.Lock()


def op_name(func) -> str:
    """The name torch.fx gives a call of ``func``: ``Tensor.__iadd__`` (``out += x``) is ``add``, a property
    read (``x.shape``) is ``getattr``, an in-place method (``relu_``) is its out-of-place name."""
    return _normalized(getattr(func, "__name__", None) or type(func).__name__)


def _normalized(name: str) -> str:
    """A function's or method's name in FX's form (see :func:`op_name`)."""
    if name == "__get__":
        return "getattr"
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in ("i", "r") and name[1:] in BINARY_OPERATORS:
            name = name[1:]
    return name.rstrip("_") or name


def op_kind(func) -> str:
    """``method`` for a tensor method (``x.flatten(1)``), ``function`` for the rest (``torch.flatten``,
    ``F.relu``, and operators, which FX records as the functions of ``operator``)."""
    name = getattr(func, "__name__", "")
    qualname = getattr(func, "__qualname__", "")
    is_tensor_member = qualname.startswith(("TensorBase.", "Tensor.", "_TensorBase."))
    if is_tensor_member and not (name.startswith("__") and name.endswith("__")):
        return METHOD
    return FUNCTION


@dataclass(frozen=True)
class OpCall:
    """One op call the tap saw in a pass: the ``index``-th op call directly in module ``scope``."""

    scope: str
    index: int
    name: str  # op_name() of the function
    kind: str
    shape: tuple[int, ...] | None  # the result's, when it is a tensor
    items: tuple[tuple[int, ...] | None, ...] = ()  # the elements' shapes, when the result is a tuple or list


@dataclass(frozen=True)
class OpSite:
    """Where an op layer's value comes from: the ``index``-th op call in ``scope`` (or, with ``module``,
    the call of that module), or its ``item``-th element."""

    scope: str
    index: int
    item: int | None = None
    module: str | None = None
    op: str = ""  # op_name() of the call it was traced as: a pass checks it before taking the value


@dataclass(frozen=True)
class OpLayer:
    """A named op layer: where it comes from and the shape of its value."""

    name: str
    kind: str
    site: OpSite
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Node:
    name: str
    op: str
    kind: str


class OpNamer:
    """The torch.fx graph of a model (or None where FX cannot trace it), and the leaf rule of its tracer.

    ``source``: the model's library; timm's models trace with timm's own leaf modules and wrapped functions.
    """

    def __init__(self, model: nn.Module, source: str = "torchvision"):
        self._tracer = _tracer(source)
        self.scopes: dict[str, list[_Node]] | None = None
        self.items: dict[str, list[tuple[int, str]]] = {}  # a node's name → its elements' (index, name)
        self.module_items: dict[str, list[tuple[int, str]]] = {}  # the same for a module call's name
        self.failure: str | None = None
        try:
            with _TRACING:
                graph = self._tracer.trace(model.eval())
        except Exception as exc:  # noqa: BLE001 - FX fails in many ways: control flow, asserts on sizes, ...
            self.failure = first_line(exc)
            return
        names = self._tracer.node_to_qualname
        self.scopes = {}
        for node in graph.nodes:
            if node.op not in ("call_function", "call_method"):
                continue
            name = names[node]
            parent = node.args[0] if node.args else None
            if _is_item(node) and parent.op in ("call_function", "call_method", "call_module"):
                table = self.module_items if parent.op == "call_module" else self.items
                table.setdefault(names[parent], []).append((node.args[1], name))
                continue
            scope = name.rsplit(".", 1)[0] if "." in name else ""
            target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            kind = METHOD if node.op == "call_method" else FUNCTION
            self.scopes.setdefault(scope, []).append(_Node(name, _normalized(target), kind))

    @property
    def traced(self) -> bool:
        return self.scopes is not None

    def is_leaf(self, module: nn.Module, name: str) -> bool:
        """Whether FX records a call of this module as one node (its ops are not op layers)."""
        return self._tracer.is_leaf_module(module, name)

    def name(self, calls: list[OpCall]) -> list[OpLayer]:
        """The op layers of a pass's op calls (in call order), named as module docstring says."""
        by_scope: dict[str, list[OpCall]] = {}
        for call in calls:
            by_scope.setdefault(call.scope, []).append(call)
        layers: dict[OpCall, list[OpLayer]] = {}
        for scope, seen in by_scope.items():
            if self.scopes is None:
                layers.update(_by_call_order(scope, seen))
            else:
                layers.update(self._by_graph(seen, self.scopes.get(scope, [])))
        return [layer for call in calls for layer in layers.get(call, ())]

    def _by_graph(self, seen: list[OpCall], nodes: list[_Node]) -> dict[OpCall, list[OpLayer]]:
        matched: dict[OpCall, list[OpLayer]] = {}
        for call, node in _common_subsequence(seen, nodes):
            site = OpSite(call.scope, call.index, op=call.name)
            found = []
            if call.shape is not None:
                found.append(OpLayer(node.name, node.kind, site, call.shape))
            for item, name in self.items.get(node.name, ()):
                shape = _item_shape(call, item)
                if shape is not None:
                    found.append(OpLayer(name, FUNCTION, OpSite(call.scope, call.index, item, op=call.name), shape))
            matched[call] = found
        return matched


def module_item_layers(namer: OpNamer | None, module_calls) -> list[tuple[int, OpLayer]]:
    """The elements of module outputs that FX names (``encoder_layer_0.getitem`` for ``x, _ = self.attn(...)``):
    (position of the module call in ``module_calls``, layer), for calls whose output is a tuple of tensors or
    a tensor. ``module_calls``: (name, output shape, element shapes) in return order."""
    if namer is None or not namer.module_items:
        return []
    found = []
    for position, (name, shape, items) in enumerate(module_calls):
        for item, layer_name in namer.module_items.get(name, ()):
            call = OpCall("", 0, "", FUNCTION, shape, items)
            element = _item_shape(call, item)
            if element is not None:
                site = OpSite("", 0, item, module=name)
                found.append((position, OpLayer(layer_name, FUNCTION, site, element)))
    return found


def _is_item(node) -> bool:
    return (
        node.op == "call_function"
        and node.target is operator.getitem
        and len(node.args) == 2
        and isinstance(node.args[1], int)
        and hasattr(node.args[0], "op")
    )


def _item_shape(call: OpCall, item: int) -> tuple[int, ...] | None:
    if call.items:
        return call.items[item] if -len(call.items) <= item < len(call.items) else None
    if call.shape and -call.shape[0] <= item < call.shape[0]:
        return call.shape[1:]
    return None


def _by_call_order(scope: str, seen: list[OpCall]) -> dict[OpCall, list[OpLayer]]:
    counts: dict[str, int] = {}
    named = {}
    for call in seen:
        index = counts.get(call.name, 0)
        counts[call.name] = index + 1
        base = f"{scope}.{call.name}" if scope else call.name
        if call.shape is not None:
            name = base if index == 0 else f"{base}_{index}"
            named[call] = [OpLayer(name, call.kind, OpSite(scope, call.index, op=call.name), call.shape)]
    return named


def _common_subsequence(seen: list[OpCall], nodes: list[_Node]) -> list[tuple[OpCall, _Node]]:
    """The longest common subsequence of the calls and the nodes, by op name; ties keep the earliest node."""
    rows, cols = len(seen), len(nodes)
    if not rows or not cols:
        return []
    # best[i][j]: the longest common subsequence of seen[i:] and nodes[j:]
    best = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            if seen[i].name == nodes[j].op:
                best[i][j] = best[i + 1][j + 1] + 1
            else:
                best[i][j] = max(best[i + 1][j], best[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < rows and j < cols:
        if seen[i].name == nodes[j].op and best[i][j] == best[i + 1][j + 1] + 1:
            pairs.append((seen[i], nodes[j]))
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def _tracer(source: str):
    """torchvision's NodePathTracer with the settings ``get_graph_node_names`` uses (plus timm's, for timm), safe
    to run beside model threads (:func:`_this_thread_only`)."""
    import torchvision  # the tracer is only needed where op layers are asked for
    from torchvision.models.feature_extraction import NodePathTracer

    tracer_class = _this_thread_only(NodePathTracer)

    leaf_modules = [
        obj for _, obj in inspect.getmembers(torchvision.ops) if inspect.isclass(obj) and issubclass(obj, nn.Module)
    ]
    kwargs: dict = {"autowrap_modules": (math, torchvision.ops), "leaf_modules": leaf_modules}
    if source == "timm":
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules

        kwargs["leaf_modules"] = leaf_modules + list(get_notrace_modules())
        kwargs["autowrap_functions"] = tuple(get_notrace_functions())
    return tracer_class(**kwargs)


def _this_thread_only(tracer_class):
    """``tracer_class``, tracing only the calls of the thread that runs ``trace``.

    While it traces, torch.fx patches ``torch.nn.Module.__call__`` and ``__getattr__`` for the whole
    process. A model thread serving a request meanwhile would have its module calls recorded into
    this graph (and fail: "module is not installed as a submodule"). Calls from other threads go
    through untouched; the functions FX wraps act only on its proxies, which other threads never hold.
    """

    class ThisThreadOnly(tracer_class):
        def trace(self, root, concrete_args=None):
            self._thread = threading.get_ident()
            return super().trace(root, concrete_args)

        def call_module(self, m, forward, args, kwargs):
            if threading.get_ident() != self._thread:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def getattr(self, attr, attr_val, parameter_proxy_cache):
            if threading.get_ident() != self._thread:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

    return ThisThreadOnly


def describe(value) -> tuple[tuple[int, ...] | None, tuple[tuple[int, ...] | None, ...]]:
    """(shape, element shapes) of an op's result: a tensor's shape, or each element's of a tuple or list."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), ()
    if isinstance(value, tuple | list) and value and any(isinstance(v, torch.Tensor) for v in value):
        return None, tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in value)
    return None, ()
