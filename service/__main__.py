"""``python -m service``: the server's commands that are not serving.

- ``python -m service weights check``: build every served model as a worker would (``LAYERTAP_*``
  settings: entries, weights, device, layer list), without starting it; exit 1 with the reason if
  it would not start.
  The container runs it at build time, and gunicorn's master before it forks.
- ``python -m service weights download``: fetch torchvision's ImageNet weights of every served
  model into the torch cache (``LAYERTAP_ALLOW_DOWNLOAD`` must allow it).
- ``python -m service settings [--write-docs]``: the settings table, or rewrite it in its page.
"""

from __future__ import annotations

import argparse
import sys

from service.core.errors import StartupError


def weights(command: str) -> int:
    """``check``: build every served model as a worker would; ``download``: fetch torchvision's weights of
    every served model into the torch cache. 0 when all is well, else 1 with the reason on stderr."""
    from service.core.settings import Settings
    from service.modeling.weights import imagenet_cache_path

    settings = Settings()
    try:
        loaded = _check(settings) if command == "check" else _download(settings)
    except StartupError as exc:
        print(f"layertap: {exc}", file=sys.stderr)
        return 1
    for entry, weights_ in loaded:
        where = f" in {imagenet_cache_path(entry)}" if weights_.member is not None else ""
        print(f"layertap: {entry.name} weights {weights_.label} ok{where}")
    return 0


def _check(settings) -> list:
    """The data plane a worker builds (entries, weights, devices, layer lists), not started: what fails here
    would fail every worker."""
    from service.dataplane.plane import DataPlane

    plane = DataPlane.from_settings(settings)
    return [(runner.entry, runner.weights) for runner in plane.runners.values()]


def _download(settings) -> list:
    from service.modeling.entries import load_entry
    from service.modeling.weights import resolve_weights

    loaded = []
    for name in settings.model_names:
        try:
            entry = load_entry(settings.model_repository, name)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        loaded.append((entry, resolve_weights("imagenet", entry, allow_download=settings.allow_download)))
    return loaded


def settings(write_docs: bool) -> int:
    """Print the settings table, or write it into its documentation page."""
    from service.core import settings as settings_module

    if write_docs:
        try:
            settings_module.write_docs_table()
        except ValueError as exc:
            print(f"layertap: {exc}", file=sys.stderr)
            return 1
    else:
        print(settings_module.settings_table())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    weights_parser = commands.add_parser("weights", help="check or download the served models' weights")
    weights_parser.add_argument("action", choices=("check", "download"))
    settings_parser = commands.add_parser("settings", help="the LAYERTAP_* settings table")
    settings_parser.add_argument("--write-docs", action="store_true", help="rewrite the table in its page")
    args = parser.parse_args(argv)
    if args.command == "weights":
        return weights(args.action)
    return settings(args.write_docs)


if __name__ == "__main__":
    sys.exit(main())
