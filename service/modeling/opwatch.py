"""Watching a pass's op calls for a tap (service/modeling/tap.py): where each is made, and the wanted results.

A pass that asks for op layers (service/modeling/ops.py), or traces them, runs under a
:class:`torch.overrides.TorchFunctionMode` that sees every torch function, tensor method and
operator as it returns (a mode is off while its own handler runs, so what a function calls inside
is not seen again). Forward pre-hooks, registered on every module by the first such pass and never
again, push the module a call is made in; the tap's forward hooks pop it. A call made inside a
leaf module (or a module inside one) is that module's own computation and is not counted. Each
other call is the ``index``-th of its scope; a wanted one is checked against the op it was traced
as, so a pass that took another path fails loudly instead of serving another tensor, and its
result (or an element of it) is copied as it returns. A pass that asks for no op layer runs no mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from service.modeling.ops import OpCall, OpNamer, OpSite, describe, op_kind, op_name

Wanted = list[tuple[str, int | None]]  # (layer name, element of the result or None for all of it)


class AllCaptured(BaseException):
    """Raised from a hook or an op to abandon the pass once nothing more is wanted. Not an Exception, so
    that a model's own ``except Exception`` around a call cannot swallow it."""


@dataclass
class OpPass:
    """The op side of one pass. ``sites``: the wanted op calls by (scope, index), with the op each was traced
    as; ``module_items``: wanted elements of module outputs, by module call; ``trace``: where a trace lists
    the calls it sees (None: not a trace); ``captured`` and ``wanted``: the pass's copies and how many it
    wants; ``gradient``: the wanted value becomes a leaf of the autograd graph instead (explanations)."""

    captured: dict[str, torch.Tensor]
    wanted: int = 0
    gradient: bool = False
    sites: dict[tuple[str, int], tuple[str, Wanted]] = field(default_factory=dict)
    module_items: dict[str, Wanted] = field(default_factory=dict)
    trace: list | None = None
    scopes: list[tuple[str, bool]] = field(default_factory=lambda: [("", False)])  # (module, inside a leaf)
    counts: dict[str, int] = field(default_factory=dict)
    paused: bool = False  # while the tap's own hooks run torch functions


class OpWatcher:
    """The op watching of one tap: its model, how its ops are named, where named op layers come from.

    ``namer``: the OpNamer, or a callable that gives it when first needed; ``sites``: a layer's OpSite,
    None for a module's; ``current``: the op side of the tap's pass in progress, or None.
    """

    def __init__(
        self,
        model: nn.Module,
        namer: OpNamer | Callable[[], OpNamer],
        sites: Callable[[str], OpSite | None] | None,
        current: Callable[[], OpPass | None],
    ):
        self.model, self._namer, self._sites, self._current = model, namer, sites, current
        self.handles: list | None = None

    @property
    def namer(self) -> OpNamer:
        if not isinstance(self._namer, OpNamer):
            self._namer = self._namer()
        return self._namer

    def plan(self, names, captured: dict, wanted: int, gradient: bool = False) -> OpPass | None:
        """The op side of a pass that wants ``names``; None when none of them is an op layer."""
        if self._sites is None:
            return None
        ops = OpPass(captured, wanted, gradient)
        for name in names:
            site = self._sites(name)
            if site is None:
                continue
            if site.module is not None:
                ops.module_items.setdefault(site.module, []).append((name, site.item))
            else:
                ops.sites.setdefault((site.scope, site.index), (site.op, []))[1].append((name, site.item))
        return ops if ops.sites or ops.module_items else None

    def install(self) -> None:
        """Register the scope pre-hooks, once per tap (all of them, or none if one fails)."""
        if self.handles is not None:
            return
        namer, handles = self.namer, []
        try:
            for name, module in self.model.named_modules():
                if name:
                    hook = functools.partial(self._enter, name, namer.is_leaf(module, name))
                    handles.append(module.register_forward_pre_hook(hook))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles or ():
            handle.remove()
        self.handles = None

    def watching(self) -> TorchFunctionMode:
        """The mode a watched pass runs under."""
        return _Mode(self._on_op)

    def leave(self, ops: OpPass, module_name: str) -> None:
        """A module returned: its scope ends (the tap's forward hook calls this)."""
        if ops.scopes[-1][0] == module_name:
            ops.scopes.pop()

    def _enter(self, module_name: str, leaf: bool, _module, _inputs) -> None:
        ops = self._current()
        if ops is not None:
            ops.scopes.append((module_name, leaf or ops.scopes[-1][1]))  # inside a leaf stays inside one

    def _on_op(self, func, result):
        """A torch function returned ``result`` in the pass in progress; the (possibly replaced) result."""
        ops = self._current()
        if ops is None or ops.paused:
            return result
        scope, inside_leaf = ops.scopes[-1]
        if inside_leaf:
            return result
        index = ops.counts.get(scope, 0)
        ops.counts[scope] = index + 1
        if ops.trace is not None:
            shape, items = describe(result)
            ops.trace.append(("op", OpCall(scope, index, op_name(func), op_kind(func), shape, items)))
            return result
        site = ops.sites.get((scope, index))
        if site is None:
            return result
        traced_as, wanted = site
        if op_name(func) != traced_as:
            raise RuntimeError(
                f"op layer {wanted[0][0]!r} was traced as {traced_as!r}, but this pass called {op_name(func)!r} "
                "there: the model took another path at this input, so its op layers cannot be told apart"
            )
        if ops.gradient:
            return _leaf(ops, wanted[0], result)
        take_items(ops, wanted, result)
        if len(ops.captured) == ops.wanted:
            raise AllCaptured
        return result


def take_items(ops: OpPass, wanted: Wanted, result) -> None:
    """Copy the wanted values out of an op's (or a module's) result, itself or its elements, as it returns:
    a later in-place op would rewrite them. The copies are contiguous (a channels_last result is not)."""
    for name, item in wanted:
        value = result if item is None else result[item]
        if isinstance(value, torch.Tensor):
            ops.captured[name] = value.clone(memory_format=torch.contiguous_format)


def _leaf(ops: OpPass, wanted: tuple[str, int | None], result):
    """The wanted value made a leaf that requires grad; the pass goes on from a copy of it."""
    name, item = wanted
    value = result if item is None else result[item]
    leaf = ops.captured[name] = value.detach().clone().requires_grad_(True)
    onward = leaf.clone()
    if item is None:
        return onward
    if isinstance(result, torch.Tensor):
        raise ValueError(f"{name!r} is an element of a tensor; explanations read whole op results only")
    return type(result)(onward if i == item else v for i, v in enumerate(result))


class _Mode(TorchFunctionMode):
    """Shows the watcher every torch function a pass calls (functions, tensor methods, operators), as it returns."""

    def __init__(self, on_op: Callable):
        super().__init__()
        self._on_op = on_op

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self._on_op(func, func(*args, **(kwargs or {})))
