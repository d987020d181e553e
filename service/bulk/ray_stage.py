"""A Ray Data stage on the service's own model runner: embed images at cluster scale with the same numbers.

``pip install -e '.[ray]'``, then, as Ray Data's batch-inference guide does it::

    ds = ray.data.read_binary_files("s3://bucket/images", include_paths=True)
    ds = ds.map_batches(
        LayertapEmbedder,
        fn_constructor_kwargs={"layers": ["avgpool"], "pool": "avg"},
        concurrency=4,          # actors, each with its model loaded once
        num_gpus=1,             # per actor, for GPU actors (LAYERTAP_DEVICE=auto then picks CUDA)
        batch_size=64,
        batch_format="pyarrow",
    )
    ds.write_parquet("out/")

Each actor builds the service's data plane from the same ``LAYERTAP_*`` settings (read in the
actor, or given as ``settings=``): the model entry, its weights, the hooks and their true values,
early exit, preprocessing, dtype and device, with one model thread that batches. The images of a
Ray batch are submitted one by one from a pool of threads, so the runner batches them as it
batches concurrent HTTP requests, and an image that cannot be decoded or is over a limit fails
its own row (``error`` column) and never the job.

Output rows: ``path``, one column per layer (a fixed-size list of float32: the layer's values,
pooled or flattened, its shape in the column's Arrow metadata under ``shape``), and ``error``
(null, or why the row has no values).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from service.core.errors import ServiceError
from service.core.settings import Settings
from service.dataplane import pooling
from service.dataplane.plane import DataPlane
from service.dataplane.pooling import OutputOptions

SHAPE_KEY = b"shape"


class LayertapEmbedder:
    """A Ray Data callable class: a batch with ``bytes`` (and ``path``) columns → path, one column per layer, error."""

    def __init__(
        self,
        layers: list[str] | None = None,
        pool: str = "none",
        normalize: bool = False,
        settings: dict | None = None,
        model: str | None = None,
    ):
        self.options = OutputOptions(pool=pool, normalize=normalize)  # a bad pool fails before a model loads
        self.settings = Settings(**(settings or {}))
        self.plane = DataPlane.from_settings(self.settings)
        self.plane.start()
        if not self.plane.wait_ready(600):
            raise RuntimeError(f"the model did not load: {self.plane.failure}")
        runner, self.layers = self.plane.check(model, tuple(layers) if layers else None, self.options)
        self.model = runner.name
        self.shapes = self._row_shapes()
        # As many images in flight as the runner batches: they meet in its queue, as HTTP requests do.
        self._threads = ThreadPoolExecutor(self.settings.max_batch_size, thread_name_prefix="layertap-ray")

    def __call__(self, batch: pa.Table | dict) -> pa.Table:
        table = batch if isinstance(batch, pa.Table) else pa.table(batch)
        images = table.column("bytes").to_pylist()
        paths = table.column("path").to_pylist() if "path" in table.column_names else [None] * len(images)
        results = list(self._threads.map(self._one, images))
        columns: dict[str, pa.Array] = {"path": pa.array(paths, pa.string())}
        fields = [pa.field("path", pa.string())]
        failed = [isinstance(result, str) for result in results]
        for layer in self.layers:
            size = int(np.prod(self.shapes[layer]))
            rows = [
                np.zeros(size, np.float32) if bad else result[layer]
                for bad, result in zip(failed, results, strict=True)
            ]
            values = pa.array(np.concatenate(rows) if rows else np.zeros(0, np.float32), pa.float32())
            columns[layer] = pa.FixedSizeListArray.from_arrays(values, size, mask=pa.array(failed, pa.bool_()))
            fields.append(pa.field(layer, columns[layer].type, metadata={SHAPE_KEY: json.dumps(self.shapes[layer])}))
        columns["error"] = pa.array([r if bad else None for bad, r in zip(failed, results, strict=True)], pa.string())
        fields.append(pa.field("error", pa.string()))
        return pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields))

    def __del__(self):
        plane = getattr(self, "plane", None)
        if plane is not None:
            plane.close(timeout=5)

    def _one(self, data: bytes) -> dict[str, np.ndarray] | str:
        """One image's layers, each flattened to a row of float32; or why it has none."""
        try:
            extracted = self.plane.extract([data], self.layers, self.options, self.model)
        except ServiceError as exc:
            return f"{exc.code}: {exc.message}"
        return {
            name: np.ascontiguousarray(array[0], np.float32).reshape(-1) for name, array in extracted.features.items()
        }

    def _row_shapes(self) -> dict[str, list[int]]:
        """Each layer's per-image shape after the output options: the service's own pooling, applied to zeros of
        the traced shape (so the rule lives in service/dataplane/pooling.py alone)."""
        runner = self.plane.runner(self.model)
        crop = runner.entry.preprocessing.crop
        traced = {call.name: call.shape for call in runner.shapes(1, crop, crop, ops=True)}  # op layers too
        return {
            layer: list(
                pooling.apply(
                    np.zeros(traced[layer], np.float32),
                    self.options,
                    runner.layout_of(layer),
                    runner.prefix_tokens(layer),
                ).shape[1:]
            )
            for layer in self.layers
        }
