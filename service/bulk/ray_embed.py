"""``layertap-ray embed SRC --out DIR``: embed a folder or bucket of images with Ray Data, written as Parquet.

    layertap-ray embed ./photos --out ./embeddings --layers avgpool --pool avg --normalize
    layertap-ray embed s3://bucket/images --out s3://bucket/embeddings --address ray://head:10001 --actors 8 --gpus 1

SRC is a folder (read recursively) or anything ``ray.data.read_binary_files`` reads; only files
with an image suffix are taken. Each Ray actor runs :class:`service.bulk.ray_stage.LayertapEmbedder`,
the service's own model runner, configured by the same ``LAYERTAP_*`` variables as the service
(this command passes the ones set where it runs to every actor). ``--address`` (or
``RAY_ADDRESS``) joins an existing cluster; otherwise a local one starts for the run. Ray Data
shows its progress bar while it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from service.dataplane.pooling import POOLS

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff")


def embed(
    source: str,
    out: str,
    layers: list[str] | None,
    pool: str = "none",
    normalize: bool = False,
    actors: int = 1,
    batch_size: int = 32,
    gpus: float = 0,
    cpus: float | None = None,
    model: str | None = None,
) -> None:
    """Read the images, run them through ``actors`` model actors, write Parquet to ``out`` (Ray must be initialized)."""
    import ray

    from service.bulk.ray_stage import LayertapEmbedder

    settings = {k: v for k, v in os.environ.items() if k.startswith("LAYERTAP_")}
    # Each file is one read task's worth at most; the reads go as wide as the cluster lets them.
    images = ray.data.read_binary_files(
        source, include_paths=True, file_extensions=[*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES)]
    )
    embedded = images.map_batches(
        LayertapEmbedder,
        fn_constructor_kwargs={"layers": layers, "pool": pool, "normalize": normalize, "model": model},
        concurrency=actors,
        batch_size=batch_size,
        batch_format="pyarrow",
        num_gpus=gpus,
        **({"num_cpus": cpus} if cpus is not None else {}),
        runtime_env={"env_vars": settings},
        # Two batches in flight per actor: one decodes in the actor's threads while the other is in the
        # model thread's forward pass (LayertapEmbedder is thread-safe: both feed the one runner).
        max_concurrency=2,
    )
    embedded.write_parquet(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layertap-ray", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("embed", help="embed images into Parquet files")
    command.add_argument("source", help="a folder (recursive), a file, or any path ray.data.read_binary_files reads")
    command.add_argument("--out", required=True, help="folder (or bucket path) for the Parquet files")
    command.add_argument("--layers", default=None, help="comma-separated layer names (default: the model's default)")
    command.add_argument("--pool", default=POOLS[0], choices=POOLS)
    command.add_argument("--normalize", action="store_true", help="scale each row to unit L2 norm")
    command.add_argument("--model", default=None, help="a model of LAYERTAP_MODELS (default: the first)")
    command.add_argument("--address", default=None, help="a Ray cluster to join (default: RAY_ADDRESS, else local)")
    command.add_argument("--actors", type=int, default=1, help="model actors, each with its own model (default 1)")
    command.add_argument("--batch-size", type=int, default=32, help="images per Ray batch handed to an actor")
    command.add_argument("--gpus", type=float, default=0, help="GPUs per actor (0: CPU actors)")
    command.add_argument("--cpus", type=float, default=None, help="CPUs per actor (default: Ray's, 1)")
    args = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        parser.error("Ray is not installed: pip install 'layertap[ray]' (or pip install -e '.[ray]' in a clone)")

    address = args.address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, log_to_driver=False)
    try:
        layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
        embed(
            args.source, args.out, layers, args.pool, args.normalize, args.actors, args.batch_size, args.gpus,
            args.cpus, args.model,
        )  # fmt: skip
    finally:
        if started_here:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
