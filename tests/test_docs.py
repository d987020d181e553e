"""The documentation: the Layout table is the generated one, and no relative link or anchor is broken.

docs/tools.py is a standalone script (it never imports ``service``), loaded here from its file.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "docs" / "tools.py"


@pytest.fixture(scope="module")
def tools():
    spec = importlib.util.spec_from_file_location("docs_tools", TOOLS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layout_table_is_the_generated_one(tools):
    assert tools.written_layout_table() == tools.layout_table(), "regenerate: python docs/tools.py layout --write"


def test_layout_table_has_a_row_per_subpackage_and_top_level_module(tools):
    table = tools.layout_table()
    packages = {p.parent for p in (ROOT / "service").rglob("__init__.py")} - {ROOT / "service"}
    modules = {p for p in (ROOT / "service").glob("*.py") if p.name != "__init__.py"}
    for path in packages - {ROOT / "service" / "models"}:
        assert f"[`{path.relative_to(ROOT).as_posix()}/`]" in table
    for path in modules:
        assert f"[`{path.relative_to(ROOT).as_posix()}`]" in table
    assert len(table.splitlines()) == 2 + len(packages - {ROOT / "service" / "models"}) + len(modules)


def test_a_new_subpackage_gets_a_row(tools, tmp_path):
    package = tmp_path / "service"
    (package / "fresh" / "inner").mkdir(parents=True)
    (package / "models").mkdir()  # the wheel's mapping of models/: never a row
    (package / "__init__.py").write_text('"""The package."""\n')
    (package / "fresh" / "__init__.py").write_text(
        '"""First ``paragraph``,\nover two lines | a pipe.\n\nNot this."""\n'
    )
    (package / "fresh" / "inner" / "__init__.py").write_text('"""Inside."""\n')
    (package / "models" / "__init__.py").write_text('"""Data."""\n')
    (package / "app.py").write_text('"""The app.\n\nMore."""\n')
    table = tools.layout_table(package, page=tmp_path / "docs" / "layout.md")
    assert table.splitlines()[2:] == [
        "| [`service/fresh/`](../service/fresh) | First `paragraph`, over two lines \\| a pipe. |",
        "| [`service/fresh/inner/`](../service/fresh/inner) | Inside. |",
        "| [`service/app.py`](../service/app.py) | The app. |",
    ]


def test_readme_and_docs_have_no_broken_link(tools):
    pages = tools.default_pages()
    assert ROOT / "README.md" in pages and ROOT / "docs" / "layout.md" in pages
    assert tools.check_links(pages) == []


def test_github_slugs(tools):
    assert tools.anchors("# A whole folder: `layertap embed`\n") == {"a-whole-folder-layertap-embed"}
    assert tools.anchors("## Embed millions of images on a cluster (Ray Data)\n") == {
        "embed-millions-of-images-on-a-cluster-ray-data"
    }
    assert tools.anchors("# `LAYERTAP_MODELS` *and* [a link](x.md)\n") == {"layertap_models-and-a-link"}
    assert tools.anchors("# Same\n\n## Same\n\n### Same\n") == {"same", "same-1", "same-2"}
    assert tools.anchors("Setext\n======\n\n```sh\n# a shell comment\n```\n") == {"setext"}
    assert tools.anchors('<a id="kept"></a>\n') == {"kept"}


@pytest.fixture
def pages(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "picture.png").write_bytes(b"")
    (tmp_path / "docs" / "other.md").write_text(
        "# Other page\n\n## A section: with `code`\n\n## A section: with `code`\n"
    )
    return tmp_path


def check(tools, folder: Path, text: str) -> list[str]:
    page = folder / "docs" / "page.md"
    page.write_text("# Page\n\n" + text)
    return [problem.split(": ", 1)[1] for problem in tools.check_links([page])]


def test_good_links_pass(tools, pages):
    text = (
        "[other](other.md), [section](other.md#a-section-with-code), [second](other.md#a-section-with-code-1),\n"
        "[here](#page), ![picture](picture.png), [![picture](picture.png)](other.md), [folder](../docs),\n"
        '[titled](other.md "a title"), [web](https://example.com/x.md#nope), [mail](mailto:a@b.c),\n'
        "[escaped](other%2Emd)\n\n[label]: other.md#other-page\n"
    )
    assert check(tools, pages, text) == []


def test_a_broken_file_link_is_found(tools, pages):
    assert check(tools, pages, "Read [the API](api.md) first.\n") == ["api.md: no such file: " + _rel(pages, "api.md")]


def test_a_broken_image_is_found(tools, pages):
    assert check(tools, pages, "![gone](gone.png)\n") == ["gone.png: no such file: " + _rel(pages, "gone.png")]


def test_a_broken_anchor_is_found(tools, pages):
    problems = check(tools, pages, "[old](other.md#hook-semantics) and [here](#nowhere)\n")
    assert problems == [
        "other.md#hook-semantics: no heading #hook-semantics in " + _rel(pages, "other.md"),
        "#nowhere: no heading #nowhere in " + _rel(pages, "page.md"),
    ]


def test_the_line_is_reported(tools, pages):
    page = pages / "docs" / "page.md"
    page.write_text("# Page\n\ntext\n\nsee [x](missing.md)\n")
    [problem] = tools.check_links([page])
    assert problem.endswith("page.md:5: missing.md: no such file: " + _rel(pages, "missing.md"))


def test_code_is_not_checked(tools, pages):
    text = (
        "```md\n[in a fence](missing.md)\n```\n\n~~~\n[tilde fence](missing.md)\n~~~\n\n"
        "`[inline](missing.md)` and ``a `[double](missing.md)` span`` and `a span over\n"
        "two lines [x](missing.md)`\n\n<!-- [a comment](missing.md) -->\n"
    )
    assert check(tools, pages, text) == []
    # but a link whose text is code is a link
    assert check(tools, pages, "[`code`](missing.md)\n") == ["missing.md: no such file: " + _rel(pages, "missing.md")]


def test_an_absolute_path_is_refused(tools, pages):
    assert check(tools, pages, "[root](/docs/other.md)\n") == [
        "/docs/other.md: absolute path: link relative to the page"
    ]


def test_the_command_exits_1_on_a_broken_link_and_0_otherwise(pages):
    page = pages / "docs" / "page.md"
    page.write_text("# Page\n\n[x](other.md#nowhere)\n")
    broken = subprocess.run([sys.executable, str(TOOLS), "check-links", str(page)], capture_output=True, text=True)
    assert broken.returncode == 1
    assert f"{page}:3: other.md#nowhere: no heading #nowhere in" in broken.stdout
    page.write_text("# Page\n\n[x](other.md#other-page)\n")
    fine = subprocess.run([sys.executable, str(TOOLS), "check-links", str(page)], capture_output=True, text=True)
    assert (fine.returncode, fine.stdout) == (0, "")


def test_the_layout_check_command_passes(tmp_path):
    result = subprocess.run([sys.executable, str(TOOLS), "layout", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _rel(folder: Path, name: str) -> str:
    """How the checker names a file under docs/: relative to the working directory."""
    return Path(os.path.relpath(folder / "docs" / name)).as_posix()
