"""``python -m service``: the weights check the container and gunicorn's master run, and the settings table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.__main__ import main
from service.core.settings import settings_table


def test_weights_check_passes_with_usable_weights(monkeypatch, capsys):
    monkeypatch.setenv("LAYERTAP_WEIGHTS", "random")
    monkeypatch.setenv("LAYERTAP_MODELS", "resnet18")
    assert main(["weights", "check"]) == 0
    assert "layertap: resnet18 weights random" in capsys.readouterr().out


def test_weights_check_fails_with_the_reason(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LAYERTAP_WEIGHTS", str(tmp_path / "missing.pt"))
    assert main(["weights", "check"]) == 1
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_settings_prints_the_generated_table(capsys):
    assert main(["settings"]) == 0
    assert capsys.readouterr().out.strip() == settings_table()


def test_runs_as_a_module_and_refuses_unknown_commands():
    done = subprocess.run([sys.executable, "-m", "service", "weights", "fetch"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "invalid choice: 'fetch'" in done.stderr


def test_weights_check_applies_every_rule_a_worker_does(monkeypatch, weights_file, capsys):
    """What would stop each worker stops the check before fork: here, one file for two models."""
    monkeypatch.setenv("LAYERTAP_WEIGHTS", str(weights_file))
    monkeypatch.setenv("LAYERTAP_MODELS", "resnet18,mobilenet_v3_large")
    assert main(["weights", "check"]) == 1
    assert "2 of the models have no checkpoint of their own" in capsys.readouterr().err


def test_writing_the_docs_table_needs_a_checkout(tmp_path, capsys):
    from service.core.settings import write_docs_table

    with pytest.raises(ValueError, match="written from a checkout"):
        write_docs_table(tmp_path / "docs" / "configuration.md")
