"""Settings: read from LAYERTAP_* variables, validated, and documented in docs/configuration.md, row for row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.settings import DOCS_PAGE, TABLE_MARKERS, Settings, settings_table, write_docs_table

CONFIGURATION_PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_environment_variables_are_read(monkeypatch):
    monkeypatch.setenv("LAYERTAP_PORT", "9123")
    monkeypatch.setenv("LAYERTAP_WEIGHTS", "random")
    monkeypatch.setenv("LAYERTAP_DEVICE", "CUDA:1")
    monkeypatch.setenv("LAYERTAP_ALLOW_DOWNLOAD", "false")
    settings = Settings()
    assert (settings.port, settings.weights, settings.device, settings.allow_download) == (
        9123,
        "random",
        "cuda:1",
        False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("LAYERTAP_PORT", "http"), ("LAYERTAP_DEVICE", "tpu"), ("LAYERTAP_DTYPE", "int4"), ("LAYERTAP_MAX_PIXELS", "0")],
)
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_keyword_is_refused():
    with pytest.raises(ValidationError):
        Settings(wieghts="random")


@pytest.mark.parametrize("name", ["LAYERTAP_JPEG_DRAFT", "layertap_jpeg_draft"])
def test_a_renamed_variable_is_refused_with_its_new_name(monkeypatch, name):
    monkeypatch.setenv(name, "false")
    with pytest.raises(ValidationError, match="LAYERTAP_JPEG_DRAFT was renamed: use LAYERTAP_PREPROCESSING="):
        Settings()


def test_torch_threads_divide_the_cores():
    assert Settings(workers=2).effective_torch_threads(cores=8) == 4
    assert Settings(workers=16).effective_torch_threads(cores=8) == 1
    assert Settings(workers=2, torch_threads=3).effective_torch_threads(cores=8) == 3


def test_the_documented_table_is_the_settings_list():
    assert DOCS_PAGE == CONFIGURATION_PAGE  # where `--write-docs` writes is the page checked here
    start, end = (re.escape(marker) for marker in TABLE_MARKERS)
    block = re.search(rf"{start}\n(.*?)\n{end}", CONFIGURATION_PAGE.read_text(), re.S)
    assert block, f"{CONFIGURATION_PAGE.name} lacks the settings table markers {TABLE_MARKERS}"
    assert block.group(1).strip() == settings_table(), "regenerate: python -m service settings --write-docs"
    documented = set(re.findall(r"`(LAYERTAP_[A-Z0-9_]+)`", block.group(1)))
    assert documented == {f"LAYERTAP_{name.upper()}" for name in Settings.model_fields}


def test_write_docs_table_replaces_only_the_table(tmp_path):
    start, end = TABLE_MARKERS
    page = tmp_path / "configuration.md"
    page.write_text(f"# Configuration\n\nbefore\n\n{start}\n| stale |\n{end}\n\nafter\n")
    write_docs_table(page)
    assert page.read_text() == f"# Configuration\n\nbefore\n\n{start}\n{settings_table()}\n{end}\n\nafter\n"


def test_queue_must_hold_a_full_request():
    with pytest.raises(ValidationError, match="max_queue_images"):
        Settings(max_queue_images=8, max_images_per_request=16)
