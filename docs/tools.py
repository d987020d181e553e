"""Documentation tools: the generated Layout table, and a check of the relative links in the Markdown pages.

Standalone on purpose (standard library only, and it never imports ``service``, which imports torch)::

    python docs/tools.py layout              # print the Layout table, generated from the package docstrings
    python docs/tools.py layout --write      # write it into docs/layout.md, between its markers
    python docs/tools.py layout --check      # exit 1 if docs/layout.md holds another table
    python docs/tools.py check-links [FILES...]   # default: README.md and docs/*.md

The Layout table has a row per package under ``service/`` (the first paragraph of its ``__init__.py``
docstring) and a row per top-level module (the first line of its docstring), so a new subpackage appears
by itself. ``check-links`` follows every relative link and image, ``[text](path#anchor)``, and checks that
the file exists and that the anchor is a heading of that file as GitHub names it.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "service"
LAYOUT_PAGE = ROOT / "docs" / "layout.md"
LAYOUT_MARKERS = ("<!-- layout-table:start -->", "<!-- layout-table:end -->")
# service/models is where the wheel maps the repository's models/ folder: data, not code.
NOT_CODE = "models"


# --- the Layout table -------------------------------------------------------------------------------------------


def _docstring(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    if not doc:
        raise SystemExit(f"{path.relative_to(ROOT)} has no docstring: say in one paragraph what it holds")
    return doc


def _cell(text: str) -> str:
    """Docstring text as one table cell: reStructuredText literals as Markdown code, pipes escaped."""
    text = " ".join(text.split())
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)  # :class:`Settings` -> `Settings`
    text = text.replace("``", "`")
    return text.replace("|", "\\|")


def _packages(folder: Path, top: bool = True):
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not (top and child.name == NOT_CODE) and (child / "__init__.py").is_file():
            yield child
            yield from _packages(child, top=False)


def layout_table(package: Path = PACKAGE, page: Path = LAYOUT_PAGE) -> str:
    """A row per package under ``package`` (its docstring's first paragraph), then one per top-level module;
    each path links to its folder or file, relative to ``page``."""
    rows = ["| path | what |", "| --- | --- |"]

    def path_cell(path: Path, shown: str) -> str:
        return f"[`{shown}`]({Path(os.path.relpath(path, page.parent)).as_posix()})"

    for folder in _packages(package):
        first_paragraph = _docstring(folder / "__init__.py").split("\n\n")[0]
        shown = f"{folder.relative_to(package.parent).as_posix()}/"
        rows.append(f"| {path_cell(folder, shown)} | {_cell(first_paragraph)} |")
    for module in sorted(package.glob("*.py")):
        if module.name != "__init__.py":
            first_line = _docstring(module).splitlines()[0]
            rows.append(f"| {path_cell(module, module.relative_to(package.parent).as_posix())} | {_cell(first_line)} |")
    return "\n".join(rows)


def _split_at_markers(text: str, page: Path) -> tuple[str, str, str]:
    start, end = LAYOUT_MARKERS
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{page}: needs one {start} line and, after it, one {end} line")
    head, rest = text.split(start, 1)
    body, tail = rest.split(end, 1)
    return head, body.strip("\n"), tail


def written_layout_table(page: Path = LAYOUT_PAGE) -> str:
    """The table that stands between the page's markers."""
    return _split_at_markers(page.read_text(encoding="utf-8"), page)[1]


def write_layout_table(page: Path = LAYOUT_PAGE, table: str | None = None) -> None:
    head, _, tail = _split_at_markers(page.read_text(encoding="utf-8"), page)
    start, end = LAYOUT_MARKERS
    page.write_text(f"{head}{start}\n{table or layout_table()}\n{end}{tail}", encoding="utf-8")


# --- Markdown: what is code, which headings a page has --------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.I)


def _blank(text: str) -> str:
    """The same text with every character but newlines made a space: offsets and line numbers stay."""
    return re.sub(r"[^\n]", " ", text)


def _mask_fences(text: str) -> str:
    """Blank out fenced code blocks, fences included (an unclosed fence runs to the end, as in CommonMark)."""
    out, fence = [], None
    for line in text.splitlines(keepends=True):
        match = FENCE.match(line)
        if fence is None:
            if match and not (match.group(1)[0] == "`" and "`" in line[match.end() :]):
                fence = match.group(1)
                out.append(_blank(line))
            else:
                out.append(line)
        else:
            out.append(_blank(line))
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                if not line[match.end() :].strip():
                    fence = None
    return "".join(out)


def _mask_code_spans(text: str, keep_content: bool = False) -> str:
    """Blank out inline code spans and HTML comments (or, with keep_content, drop only the backticks).

    A run of n backticks opens a span that the next run of exactly n backticks closes, within one paragraph;
    a run with no closing run is literal text, as in CommonMark.
    """
    out, i = [], 0
    while i < len(text):
        if text.startswith("<!--", i):
            close = text.find("-->", i + 4)
            close = len(text) if close < 0 else close + 3
            out.append(_blank(text[i:close]))
            i = close
            continue
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if char != "`":
            out.append(char)
            i += 1
            continue
        run = len(text) - i - len(text[i:].lstrip("`"))
        paragraph_end = re.compile(r"\n[ \t]*\n").search(text, i)
        limit = paragraph_end.start() if paragraph_end else len(text)
        closing = re.compile(rf"(?<!`)`{{{run}}}(?!`)").search(text, i + run, limit)
        if closing is None:
            out.append(text[i : i + run])
            i += run
            continue
        content = text[i + run : closing.start()]
        out.append(content if keep_content else _blank(text[i : closing.end()]))
        i = closing.end()
    return "".join(out)


def _heading_text(raw: str) -> str:
    """A heading's text as GitHub renders it: no code backticks, links as their text, no emphasis marks."""
    text = _mask_code_spans(raw, keep_content=True)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis marks; snake_case underscores stay
    return text.strip()


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lowercase; letters, digits, hyphens, underscores and spaces kept
    (every other character dropped); each space becomes a hyphen."""
    kept = []
    for char in heading.lower():
        if char in " -_" or unicodedata.category(char)[0] in "LNM":
            kept.append("-" if char == " " else char)
    return "".join(kept)


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown page offers: its headings' slugs (the second equal one gets -1, the third -2, ...)
    and the ids of its HTML anchors."""
    prose = _mask_fences(text)
    lines = prose.splitlines()
    found: set[str] = set(HTML_ANCHOR.findall(prose))
    seen: dict[str, int] = {}

    def add(raw: str) -> None:
        slug = github_slug(_heading_text(raw))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")

    for number, line in enumerate(lines):
        heading = ATX_HEADING.match(line)
        if heading:
            add(heading.group(2) or "")
            continue
        previous = lines[number - 1] if number else ""
        underline = SETEXT_UNDERLINE.match(line)
        # A setext heading: a paragraph line underlined with === or --- (not a table row, quote or list item).
        if underline and previous.strip() and not previous.lstrip().startswith(("|", ">", "-", "*", "+", "#")):
            add(previous.strip())
    return found


# --- links -------------------------------------------------------------------------------------------------------

# [text](destination "title") and ![alt](destination): text may hold one level of brackets (an image in a link).
INLINE_LINK = re.compile(
    r"!?\[((?:[^\[\]\\]|\\.|\[(?:[^\[\]\\]|\\.)*\])*)\]"
    r"\(\s*(<[^<>\n]*>|(?:[^\s()\\]|\\.|\((?:[^\s()\\]|\\.)*\))*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
# [label]: destination, a link reference definition.
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*(<[^<>\n]*>|\S+)", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def links(text: str):
    """(line, destination) for every link and image outside code, in order."""
    prose = _mask_code_spans(_mask_fences(text))
    found = []

    def scan(segment: str, offset: int) -> None:
        for match in INLINE_LINK.finditer(segment):
            found.append((offset + match.start(2), match.group(2)))
            scan(match.group(1), offset + match.start(1))  # an image inside a link's text

    scan(prose, 0)
    found.extend((match.start(1), match.group(1)) for match in REFERENCE_DEFINITION.finditer(prose))
    found.sort()
    return [(prose.count("\n", 0, position) + 1, destination) for position, destination in found]


def link_problem(source: Path, destination: str, cache: dict[Path, set[str]]) -> str | None:
    """Why a link from ``source`` is broken, or None when it is fine (or not ours to check)."""
    target = destination[1:-1] if destination.startswith("<") else destination
    if not target:
        return "empty link"
    if SCHEME.match(target) or target.startswith("//"):
        return None  # http(s)://, mailto: and other absolute URLs are not checked
    path, _, anchor = target.partition("#")
    path = unquote(path.split("?", 1)[0])
    if path.startswith("/"):
        return "absolute path: link relative to the page"
    file = (source.parent / path).resolve() if path else source.resolve()
    if not file.exists():
        return f"no such file: {os.path.relpath(file)}"
    if not anchor or file.suffix.lower() not in {".md", ".markdown"}:
        return None  # a folder, or an anchor into a file that is not Markdown (#L10 on GitHub): not checked
    if file not in cache:
        cache[file] = anchors(file.read_text(encoding="utf-8"))
    if unquote(anchor) not in cache[file]:
        return f"no heading #{anchor} in {os.path.relpath(file)}"
    return None


def check_links(files: list[Path]) -> list[str]:
    """``file:line: link: reason`` for each broken relative link in the files."""
    cache: dict[Path, set[str]] = {}
    problems = []
    for file in files:
        for line, destination in links(file.read_text(encoding="utf-8")):
            problem = link_problem(file, destination, cache)
            if problem:
                problems.append(f"{_shown(file)}:{line}: {destination}: {problem}")
    return problems


def _shown(path: Path) -> str:
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()


def default_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- command line -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docs/tools.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    layout = commands.add_parser("layout", help="the Layout table of docs/layout.md, from the package docstrings")
    mode = layout.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write it into docs/layout.md, between its markers")
    mode.add_argument("--check", action="store_true", help="exit 1 if docs/layout.md holds another table")
    check = commands.add_parser("check-links", help="check relative links and anchors in Markdown files")
    check.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/*.md")
    args = parser.parse_args(argv)

    if args.command == "layout":
        table = layout_table()
        if args.write:
            write_layout_table(table=table)
        elif args.check:
            if written_layout_table() != table:
                print(f"{_shown(LAYOUT_PAGE)}: the Layout table is stale: python docs/tools.py layout --write")
                return 1
        else:
            print(table)
        return 0

    problems = check_links(args.files or default_pages())
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
