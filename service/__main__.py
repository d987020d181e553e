"""``python -m service``: the server's commands that are not serving.

- ``python -m service weights check``: resolve every served model's weights as the server would
  (``LAYERTAP_*`` settings) and build the model; exit 1 with the reason if it would not start.
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
    """Resolve (``download``: fetch ImageNet's) weights for every served model; 0 when all are usable."""
    from service.core.settings import Settings
    from service.modeling.build import build_model, resolve_device
    from service.modeling.entries import load_entry
    from service.modeling.weights import entry_weights, imagenet_cache_path, resolve_weights

    settings = Settings()
    spec = "imagenet" if command == "download" else settings.weights
    for name in settings.model_names:
        try:
            entry = load_entry(settings.model_repository, name)
            if command == "download":  # torchvision's own weights, whatever the entry's checkpoint
                loaded = resolve_weights(spec, entry, allow_download=settings.allow_download, seed=settings.seed)
            else:
                loaded = entry_weights(spec, entry, allow_download=settings.allow_download, seed=settings.seed)
            if command == "check":
                build_model(entry, loaded)
                resolve_device(settings.device)
        except (StartupError, ValueError) as exc:
            print(f"layertap: {exc}", file=sys.stderr)
            return 1
        where = f" in {imagenet_cache_path(entry)}" if loaded.member is not None else ""
        print(f"layertap: {entry.name} weights {loaded.label} ok{where}")
    return 0


def settings(write_docs: bool) -> int:
    """Print the settings table, or write it into its documentation page."""
    from service.core import settings as settings_module

    if write_docs:
        settings_module.write_docs_table()
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
