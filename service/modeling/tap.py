"""Forward hooks that capture the *true* outputs of named modules, installed once per model.

Why not ``torchvision.models.feature_extraction.create_feature_extractor``? It returns whatever
tensor a node produced, after later in-place ops have rewritten it: ResNet's ``bn1`` comes back
post-ReLU (``relu(inplace=True)``) and every block's ``bn2`` comes back with the residual added
(``out += identity``). A hook that keeps a reference has the same bug. :class:`LayerTap` clones
an output at the moment its module returns, so callers get the value the module computed.

Naming follows torchvision FX: a module called more than once per forward pass exposes each
call, the first under its own name and the k-th (k ≥ 1) as ``<name>_<k>``; in a ResNet
``BasicBlock`` the shared ``relu`` runs twice, as ``layer1.0.relu`` and ``layer1.0.relu_1``.

A module that returns a tuple (attention returns ``(output, weights)``) is served as its first
tensor, the module's output proper; attention weights, which torchvision's ViT does not even
compute (``need_weights=False``), are not a layer. A module that returns a mapping (transformers'
``ModelOutput``) is served as its first value (``last_hidden_state``).

A pass runs ``run(model, inputs)``, the library's own call (service/modeling/network.py). When
that call's result is a layer of its own (``output``: the library's embedding, which may be no
module's output), it is captured as the pass returns, as the last layer.

The hooks are registered once, on every named module, when the tap is built; for explanations
(:meth:`LayerTap.capture_for_gradient`) the same hooks make one call's output a leaf of the
autograd graph. Each forward pass says which calls it wants; the pass is abandoned as soon as
the last of them has been captured, so asking for ``layer1`` never runs ``layer2`` .. ``fc``.
A tap (like its model) belongs to one thread: it keeps the state of the pass in progress.

**Op layers** (service/modeling/ops.py): given an :class:`~service.modeling.ops.OpNamer`, a tap also
serves the results of functional ops and tensor methods. Only a pass that asks for one (or traces
them) watches ops (service/modeling/opwatch.py): under a :class:`torch.overrides.TorchFunctionMode`,
with forward pre-hooks that say which module each call is made in, registered on every module the
first time such a pass runs (so ``hook_count`` grows once then). A pass that asks for no op layer
runs no mode, and those pre-hooks return at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from service.modeling.network import Run, call_module
from service.modeling.ops import OpNamer, OpSite, describe, module_item_layers
from service.modeling.opwatch import AllCaptured, OpPass, OpWatcher, take_items


def call_name(module_name: str, call_index: int) -> str:
    """Name of the ``call_index``-th call (0-based) of a module, after torchvision FX's naming."""
    return module_name if call_index == 0 else f"{module_name}_{call_index}"


@dataclass(frozen=True)
class LayerCall:
    """One call of a named module during a forward pass, and the shape of what it returned."""

    name: str
    module: str
    type: str
    call_index: int
    calls: int
    shape: tuple[int, ...] | None
    op: str | None = None  # "function" or "method" for an op layer (service/modeling/ops.py), None for a module call
    site: OpSite | None = None  # where an op layer's value comes from


def first_tensor(output):
    """A module's output proper: the output itself, the first element of a tuple such as attention's, or the
    first value of a mapping such as transformers' ``ModelOutput``."""
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, dict) and output:
        first = next(iter(output.values()))
        if isinstance(first, torch.Tensor):
            return first
    return output


def _replace_first(raw_output, tensor: torch.Tensor):
    """``raw_output`` with its output proper (see :func:`first_tensor`) replaced by ``tensor``."""
    if isinstance(raw_output, torch.Tensor):
        return tensor
    if isinstance(raw_output, dict):
        raw_output[next(iter(raw_output))] = tensor  # a fresh object of this call's, ours to change
        return raw_output
    return (tensor, *raw_output[1:])


@dataclass
class _Pass:
    wanted: frozenset[str] = frozenset()
    captured: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    # ("module", name, module, type, call index, shape, element shapes) per module call, and ("op", OpCall)
    # per op call when the trace lists ops, in the order they returned
    trace: list[tuple] | None = None
    gradient_of: str | None = None  # the call whose output becomes a leaf of the graph (capture_for_gradient)
    ops: OpPass | None = None  # the op side of a pass that watches ops (service/modeling/opwatch.py)


def registered_hooks(model: nn.Module) -> int:
    """Every forward, forward-pre, backward and backward-pre hook on ``model``'s modules. torch offers no
    public count, so this reads the registries ``register_*_hook`` writes to."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(module, kind, ())) for module in model.modules() for kind in kinds)


class LayerTap:
    """Hooks on every named module of ``model``; :meth:`capture` and :meth:`trace` run forward passes.

    ``run(model, inputs)``: the forward pass (default: ``model(inputs)``); ``output``: the name its result is
    served under, or None when it is not a layer of its own. ``ops``: how op calls are named, or a callable that
    gives it when first needed (None: this tap serves no op layer); ``sites``: where a named op layer comes from
    (None for a module's name)."""

    def __init__(
        self,
        model: nn.Module,
        run: Run = call_module,
        output: str | None = None,
        ops: OpNamer | Callable[[], OpNamer] | None = None,
        sites: Callable[[str], OpSite | None] | None = None,
    ):
        self.model = model
        self.run = run
        self.output = output
        self._watch = OpWatcher(model, ops, sites, self._current_ops) if ops is not None else None
        if output is not None and output in dict(model.named_modules()):
            raise ValueError(f"the pass's output cannot be named {output!r}: a module of the model has that name")
        self._pass: _Pass | None = None
        self._handles = [
            module.register_forward_hook(functools.partial(self._on_output, name))
            for name, module in model.named_modules()
            if name
        ]

    def capture(self, inputs: torch.Tensor, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        """Run the model on ``inputs``; return a contiguous copy of each wanted call's output.

        Raises ValueError when ``wanted`` is empty or names a call that did not happen (check
        names against :meth:`trace` first).
        """
        if not wanted:
            raise ValueError("capture needs at least one layer name; trace() lists them")
        state = _Pass(wanted=frozenset(wanted))
        if self._watch is not None:
            state.ops = self._watch.plan(wanted, state.captured, len(state.wanted))
        self._run(inputs, state)
        missing = state.wanted - state.captured.keys()
        if missing:
            raise ValueError(
                f"no tensor output was produced for {sorted(missing)}; trace() lists the layers that exist"
            )
        return state.captured

    def capture_for_gradient(self, inputs: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the whole model with the named call's output made a leaf that requires grad; (model output, leaf).

        The pass goes on from a copy of the leaf, so a later in-place op rewrites the copy and the
        leaf keeps the value the call returned: ``autograd.grad(score, leaf)`` is the gradient with
        respect to exactly that value, and no graph is kept upstream of it. Call it in grad mode.
        """
        state = _Pass(gradient_of=name)
        if self._watch is not None:
            state.ops = self._watch.plan((name,), state.captured, 1, gradient=True)
        output = self._run(inputs, state)
        if name not in state.captured:
            raise ValueError(f"no tensor output was produced for {name!r}; trace() lists the layers that exist")
        return first_tensor(output), state.captured[name]

    def trace(self, inputs: torch.Tensor, ops: bool = False) -> list[LayerCall]:
        """Run the whole model on ``inputs`` and list every module call in the order the calls returned;
        with ``ops``, the op layers too (service/modeling/ops.py), each where its call returned."""
        namer = self.ops if ops else None
        state = _Pass(trace=[])
        if ops:
            state.ops = OpPass(state.captured, trace=state.trace)
        self._run(inputs, state)
        modules = [entry for entry in state.trace if entry[0] == "module"]
        calls = [
            LayerCall(name=name, module=module, type=kind, call_index=index, calls=state.calls[module], shape=shape)
            for _, name, module, kind, index, shape, _ in modules
        ]
        if not ops:
            return calls
        # Each op layer goes where its call returned; the elements of a module's output right after the module.
        op_calls = [entry[1] for entry in state.trace if entry[0] == "op"]
        named: dict[tuple[str, int], list] = {}
        for layer in namer.name(op_calls):
            named.setdefault((layer.site.scope, layer.site.index), []).append(layer)
        items: dict[int, list] = {}
        for position, layer in module_item_layers(namer, [(e[1], e[5], e[6]) for e in modules]):
            items.setdefault(position, []).append(layer)
        ordered, position = [], 0
        for entry in state.trace:
            if entry[0] == "module":
                ordered.append(calls[position])
                ordered.extend(_op_call(layer, layer.site.module) for layer in items.get(position, ()))
                position += 1
            else:
                ordered.extend(
                    _op_call(layer, entry[1].scope) for layer in named.get((entry[1].scope, entry[1].index), ())
                )
        return ordered

    def remove(self) -> None:
        """Take the hooks off the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._watch is not None:
            self._watch.remove()

    @property
    def ops(self) -> OpNamer:
        """How this tap names op calls (service/modeling/ops.py); ValueError for a tap built without."""
        if self._watch is None:
            raise ValueError("this tap was built without an OpNamer: it serves no op layer")
        return self._watch.namer

    @property
    def hook_count(self) -> int:
        """The hooks registered on the model's modules right now, whoever registered them (not only this
        tap's): a hook left behind by a request, an explanation or a library shows here."""
        return registered_hooks(self.model)

    def _run(self, inputs: torch.Tensor, state: _Pass):
        """The model's output, or None for a pass abandoned once everything it wanted was captured."""
        if state.ops is not None:
            self._watch.install()  # before the pass begins: a failure here leaves no state behind
        self._pass = state
        try:
            if state.ops is not None:
                with self._watch.watching():
                    output = self.run(self.model, inputs)
            else:
                output = self.run(self.model, inputs)
        except AllCaptured:
            return None
        finally:
            self._pass = None
        if self.output is not None and isinstance(output, torch.Tensor):
            self._on_output(self.output, None, (), output, state)
        return output

    def _on_output(self, module_name: str, module: nn.Module | None, _inputs, raw_output, state: _Pass | None = None):
        state = state or self._pass
        if state is None:  # a forward pass that is not ours (e.g. someone else's call of the model)
            return None
        if state.ops is None:
            return self._took_output(state, module_name, module, raw_output)
        if module is not None:
            self._watch.leave(state.ops, module_name)
        state.ops.paused = True  # the torch calls of this hook are the tap's, not the model's ops
        try:
            return self._took_output(state, module_name, module, raw_output)
        finally:
            state.ops.paused = False

    def _took_output(self, state: _Pass, module_name: str, module: nn.Module | None, raw_output):
        index = state.calls.get(module_name, 0)
        state.calls[module_name] = index + 1
        name = call_name(module_name, index)
        if state.ops is not None and state.ops.module_items.get(name) and module is not None:
            take_items(state.ops, state.ops.module_items[name], raw_output)
        output = first_tensor(raw_output)
        if state.gradient_of is not None:
            if name != state.gradient_of or not isinstance(output, torch.Tensor):
                return None
            if module is None:  # the pass's own result: it is already the end of the graph
                state.captured[name] = output
                return None
            leaf = state.captured[name] = output.detach().clone().requires_grad_(True)
            onward = leaf.clone()  # what the rest of the model gets, and may rewrite in place
            return _replace_first(raw_output, onward)
        if state.trace is not None:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
            kind = type(module).__name__ if module is not None else "output"
            state.trace.append(("module", name, module_name, kind, index, shape, describe(raw_output)[1]))
            return None
        if name in state.wanted and isinstance(output, torch.Tensor):
            # Copy now: a later in-place op (ReLU(inplace=True), `out += identity`) would
            # otherwise rewrite the value we return. The copy is also contiguous, which a
            # channels_last output is not.
            state.captured[name] = output.clone(memory_format=torch.contiguous_format)
        if len(state.captured) == len(state.wanted) and module is not None:
            raise AllCaptured
        return None

    def _current_ops(self) -> OpPass | None:
        return self._pass.ops if self._pass is not None else None


def _op_call(layer, module: str) -> LayerCall:
    """An op layer as a trace lists it: ``module`` is the module its call is made in."""
    return LayerCall(
        name=layer.name, module=module, type=layer.kind, call_index=0, calls=1, shape=layer.shape, op=layer.kind,
        site=layer.site,
    )  # fmt: skip
