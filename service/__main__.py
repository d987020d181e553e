"""``python -m service``: the server's commands that are not serving.

- ``python -m service weights check``: build every served model as a worker would (``LAYERTAP_*``
  settings: entries, weights, device, layer list), without starting it; exit 1 with the reason if
  it would not start.
  The container runs it at build time, and gunicorn's master before it forks.
- ``python -m service weights download``: fetch the pretrained weights of every served model into
  its library's cache: torchvision's into the torch cache; timm's, transformers' (with their
  config and image processor) and open_clip's into the Hugging Face cache
  (``LAYERTAP_ALLOW_DOWNLOAD`` must allow it).
- ``python -m service settings [--write-docs]``: the settings table, or rewrite it in its page.
"""

from __future__ import annotations

import argparse
import sys

from service.core.errors import StartupError


def weights(command: str) -> int:
    """``check``: build every served model as a worker would; ``download``: fetch the pretrained weights of
    every served model into its library's cache. 0 when all is well, else 1 with the reason on stderr."""
    from service.core.settings import Settings

    settings = Settings()
    try:
        loaded = _check(settings) if command == "check" else _download(settings)
    except StartupError as exc:
        print(f"layertap: {exc}", file=sys.stderr)
        return 1
    for entry, weights_ in loaded:
        print(f"layertap: {entry.name} weights {weights_.label} ok{_where(entry, weights_)}")
    return 0


def _where(entry, weights_) -> str:
    """Which cache holds pretrained weights (for the operator who fills it)."""
    if weights_.member is not None:
        from service.modeling.weights import imagenet_cache_path

        return f" in {imagenet_cache_path(entry)}"
    if weights_.pretrained is not None:
        from service.modeling.sources.hub import cache_dir

        return f" in {cache_dir(weights_.hub)}"
    return ""


def _check(settings) -> list:
    """The data plane a worker builds (entries, weights, devices, layer lists), not started: what fails here
    would fail every worker."""
    from service.dataplane.plane import DataPlane

    plane = DataPlane.from_settings(settings)
    return [(runner.entry, runner.weights) for runner in plane.runners.values()]


def _download(settings) -> list:
    """Each entry's pretrained weights into its library's cache: torchvision's by resolving them, the other
    libraries' by building the model (which also fetches its config and image processor)."""
    from service.modeling.build import build_network
    from service.modeling.entries import load_entry
    from service.modeling.weights import HubAccess, resolve_weights

    hub = HubAccess(settings.allow_download, settings.hub_cache, settings.trust_remote_code)
    loaded = []
    for name in settings.model_names:
        try:
            entry = load_entry(settings.model_repository, name)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        weights_ = resolve_weights("pretrained", entry, allow_download=settings.allow_download, hub=hub)
        if entry.source != "torchvision":
            build_network(entry, weights_)
        loaded.append((entry, weights_))
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
