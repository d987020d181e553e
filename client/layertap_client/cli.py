"""``layertap embed DIR``: embed every image under a folder through a layertap service, resumably.

Images are sent in batches (multipart), several batches at once; 429 and 503 answers are retried
with backoff. Every finished batch is written at once to ``<out>.parts/``, so an interrupted run
(Ctrl-C, a crash, a reboot) picks up where it stopped; at the end the parts become one ``.npz``
with ``paths`` (relative to DIR) and one array per layer, a row per image, in path order. Images
the service refuses (corrupt, too large) are listed in ``errors`` (path and message), not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from . import LayertapClient, LayertapError

# Refusals about one image, not about the request: those images are skipped and listed. Anything
# else (an unknown layer, a bad option, a wrong key) would fail every image: stop instead.
IMAGE_REFUSALS = {"invalid_image", "image_too_large", "payload_too_large", "too_many_images"}

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def find_images(root: Path) -> list[str]:
    """Image files under ``root``, as sorted POSIX paths relative to it."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def embed(
    root: Path,
    out: Path,
    client: LayertapClient,
    layers: list[str],
    pool: str = "avg",
    normalize: bool = False,
    batch_size: int = 16,
    concurrency: int = 4,
    progress: bool = True,
) -> dict:
    """Embed every image under ``root`` into ``out``; returns a summary (done, skipped, errors)."""
    paths = find_images(root)
    parts_dir = out.with_name(out.name + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    _check_options(parts_dir, {"layers": layers, "pool": pool, "normalize": normalize})
    done = _finished_paths(parts_dir)
    todo = [p for p in paths if p not in done]
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), unit="img", disable=not progress, smoothing=0.1)
    if done:
        bar.write(f"resuming: {len(paths) - len(todo)} of {len(paths)} images already embedded")
    next_part = len(list(parts_dir.glob("part-*.npz")))

    def run(batch: list[str]) -> tuple[list[str], dict[str, np.ndarray], list[tuple[str, str]]]:
        return _embed_batch(root, batch, client, layers, pool, normalize)

    with ThreadPoolExecutor(concurrency) as pool_:
        pending = set()
        queue = iter(batches)
        for batch in queue:
            pending.add(pool_.submit(run, batch))
            if len(pending) >= concurrency * 2:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            # Save every batch that succeeded before raising for one that failed: nothing done is lost.
            failures = [future.exception() for future in finished if future.exception() is not None]
            for future in finished:
                if future.exception() is None:
                    ok_paths, arrays, errors = future.result()
                    _write_part(parts_dir / f"part-{next_part:06d}.npz", ok_paths, arrays, errors)
                    next_part += 1
                    bar.update(len(ok_paths) + len(errors))
            if failures:
                for future in pending:
                    future.cancel()
                raise failures[0]
            for batch in queue:
                pending.add(pool_.submit(run, batch))
                if len(pending) >= concurrency * 2:
                    break
    bar.close()
    summary = _merge(parts_dir, out, layers)
    shutil.rmtree(parts_dir)
    return summary


def _embed_batch(root, batch, client, layers, pool, normalize):
    """(embedded paths, their arrays, [(path, why)] for images the service refused)."""
    images = [(root / p).read_bytes() for p in batch]
    try:
        return batch, client.features(images, layers, pool=pool, normalize=normalize), []
    except LayertapError as exc:
        if exc.code not in IMAGE_REFUSALS:
            raise
        if len(batch) == 1:
            return [], {}, [(batch[0], exc.message)]
    # One bad file fails its whole batch: find it by sending the batch's images one by one.
    ok, rows, errors = [], {name: [] for name in layers}, []
    for path, data in zip(batch, images, strict=True):
        good, arrays, bad = _embed_batch_of_one(path, data, client, layers, pool, normalize)
        ok += good
        errors += bad
        for name, array in arrays.items():
            rows[name].append(array)
    return ok, ({name: np.concatenate(chunks) for name, chunks in rows.items()} if ok else {}), errors


def _embed_batch_of_one(path, data, client, layers, pool, normalize):
    try:
        return [path], client.features([data], layers, pool=pool, normalize=normalize), []
    except LayertapError as exc:
        if exc.code not in IMAGE_REFUSALS:
            raise
        return [], {}, [(path, exc.message)]


def _check_options(parts_dir: Path, options: dict) -> None:
    """Parts of an unfinished run must have been made with the same options, or their rows would not fit."""
    manifest = parts_dir / "options.json"
    if manifest.exists():
        earlier = json.loads(manifest.read_text())
        if earlier != options:
            raise LayertapError(
                0,
                "options_changed",
                f"{parts_dir} holds an unfinished run made with {earlier}; finish it with the same options, "
                "or delete that folder to start over",
            )
    else:
        manifest.write_text(json.dumps(options))


def _write_part(path: Path, paths: list[str], arrays: dict[str, np.ndarray], errors: list[tuple[str, str]]) -> None:
    temporary = path.with_suffix(".tmp.npz")
    np.savez(
        temporary,
        paths=np.array(paths, dtype=str),
        errors=np.array(errors, dtype=str).reshape(-1, 2),
        **{f"layer:{name}": array for name, array in arrays.items()},
    )
    os.replace(temporary, path)  # a part is there whole, or not at all


def _finished_paths(parts_dir: Path) -> set[str]:
    done: set[str] = set()
    for part in parts_dir.glob("part-*.npz"):
        if part.name.endswith(".tmp.npz"):
            continue
        with np.load(part) as data:
            done.update(data["paths"].tolist())
            done.update(row[0] for row in data["errors"].tolist())
    return done


def _merge(parts_dir: Path, out: Path, layers: list[str]) -> dict:
    paths: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    errors: list[list[str]] = []
    for part in sorted(parts_dir.glob("part-*.npz")):
        if part.name.endswith(".tmp.npz"):
            continue
        with np.load(part) as data:
            paths.extend(data["paths"].tolist())
            errors.extend(data["errors"].tolist())
            for name in layers:
                if f"layer:{name}" in data:
                    arrays[name].append(data[f"layer:{name}"])
    order = np.argsort(np.array(paths, dtype=str), kind="stable")
    merged = {name: np.concatenate(chunks)[order] for name, chunks in arrays.items() if chunks}
    np.savez(out, paths=np.array(paths, dtype=str)[order], errors=np.array(errors, dtype=str).reshape(-1, 2), **merged)
    return {"images": len(paths), "errors": errors, "out": str(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layertap", description="Client for a layertap service.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("embed", help="embed every image under a folder", description=__doc__)
    command.add_argument("dir", type=Path, help="folder to walk (recursively)")
    command.add_argument(
        "--layers", help="comma-separated layer names (default: the model's default layer, from GET /info)"
    )
    command.add_argument("--model", help="a model the server serves (default: its default model)")
    command.add_argument("--out", type=Path, default=Path("features.npz"), help="output .npz (default features.npz)")
    command.add_argument("--url", default=os.environ.get("LAYERTAP_URL", "http://localhost:8080"), help="service URL")
    command.add_argument(
        "--api-key", default=os.environ.get("LAYERTAP_API_KEY"), help="bearer key, if the service has one"
    )
    command.add_argument("--pool", choices=("none", "avg", "max"), default="avg", help="spatial pooling (default avg)")
    command.add_argument("--normalize", action="store_true", help="L2-normalize each vector")
    command.add_argument("--batch-size", type=int, default=16, help="images per request (default 16)")
    command.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.error(f"{args.dir} is not a folder")
    client = LayertapClient(args.url, api_key=args.api_key, model=args.model)
    try:
        layers = [name.strip() for name in (args.layers or "").split(",") if name.strip()]
        summary = embed(
            args.dir,
            args.out,
            client,
            layers or [client.info()["default_layer"]],
            pool=args.pool,
            normalize=args.normalize,
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            progress=not args.quiet,
        )
    except LayertapError as exc:
        print(f"layertap: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:  # the service cannot be reached, even after the retries
        print(f"layertap: {args.url}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nlayertap: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    for path, message in summary["errors"]:
        print(f"skipped {path}: {message}", file=sys.stderr)
    print(f"layertap: {summary['images']} images embedded into {summary['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
