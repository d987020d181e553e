"""The package's shape: no import cycle, a small top level, and tests that use public seams only.

The layer contracts themselves are import-linter's, in pyproject.toml (``make lint``). This file
adds what a contract cannot say: that no cycle exists anywhere (imports under ``TYPE_CHECKING``
and inside functions included: grimp reads every import statement), and that no test reaches
into a private name or patches a module global of ours.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PATCHERS = {"setattr", "patch", "object", "delattr"}  # monkeypatch.setattr, mock.patch(.object), monkeypatch.delattr


def import_cycles(package: str) -> list[list[str]]:
    """Every set of modules of ``package`` that import each other, directly or through others (Tarjan's SCCs)."""
    graph = grimp.build_graph(package, cache_dir=None)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1 or module in graph.find_modules_directly_imported_by(module):
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_service_has_no_import_cycle():
    assert import_cycles("service") == []


def test_a_cycle_would_be_found(tmp_path, monkeypatch):
    """The check above can fail: a cycle through a TYPE_CHECKING import and a function-level import is found."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic import b\n")
    (package / "b.py").write_text("def late():\n    from cyclic import c\n")
    (package / "c.py").write_text("import cyclic.a\n")
    (package / "d.py").write_text("import cyclic.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("cyclic") == [["cyclic.a", "cyclic.b", "cyclic.c"]]
    sys.modules.pop("cyclic", None)


def test_the_top_of_the_package_holds_only_its_entry_points():
    """The folders show the architecture: at most six modules at the top of service/, the rest in subpackages."""
    top = sorted(path.name for path in (ROOT / "service").glob("*.py"))
    assert len(top) <= 6, top
    assert {"__init__.py", "app.py", "gunicorn_conf.py"} <= set(top)


def service_module_aliases(tree: ast.Module) -> set[str]:
    """Names a test file binds to modules of ours (``import service.x as y``, ``from service.x import module``)."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("service")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service"):
            for alias in node.names:
                if (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").exists() or (
                    ROOT / node.module.replace(".", "/") / alias.name / "__init__.py"
                ).exists():
                    aliases.add(alias.asname or alias.name)
    return aliases


def private_patches(source: str) -> list[str]:
    """Every patch in ``source`` of a private name (``_x``), or of a module global of ours."""
    tree = ast.parse(source)
    modules = service_module_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PATCHERS):
            continue
        args = node.args
        target = args[0] if args else None
        name = args[1] if len(args) > 1 else None
        text = f"line {node.lineno}: {ast.unparse(node)[:120]}"
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            dotted = target.value
            if dotted.startswith("service.") or any(part.startswith("_") for part in dotted.split(".")):
                found.append(text)
        elif isinstance(name, ast.Constant) and isinstance(name.value, str):
            # a module of ours, or a library patched through one of ours (``preprocess.F``, ``hardware.os.path``)
            if name.value.startswith("_") or _root_name(target) in modules:
                found.append(text)
    return found


def _root_name(node: ast.expr | None) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_no_test_patches_a_private_name_or_a_module_global():
    """Tests use the seams the code offers (RunnerSeams, constructor parameters, environment variables)."""
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if (found := private_patches(path.read_text()))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ndef test(monkeypatch):\n    monkeypatch.setattr(torch.hub, '_hub_dir', None)\n",
        "import service.runners.runner as r\ndef test(monkeypatch):\n    monkeypatch.setattr(r, 'place', None)\n",
        "from service.images import preprocess\ndef test(mp):\n    mp.setattr(preprocess.F, 'interpolate', None)\n",
        "def test(monkeypatch):\n    monkeypatch.setattr('service.core.settings.available_cores', None)\n",
        "from service.core import hardware\ndef test(mp):\n    mp.setattr(hardware.os.path, 'exists', None)\n",
    ],
)
def test_the_patch_check_catches(source):
    assert private_patches(source)


def test_every_subpackage_ships_in_the_wheel():
    """setuptools takes the packages pyproject.toml lists, not the folders: a new subpackage must be listed."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "service").rglob("__init__.py")}
    assert folders - listed == set()
