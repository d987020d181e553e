"""int8 against float32 on the sample photos: cosine per layer, and top-1 agreement of the classifier.

    .venv/bin/python -m bench.int8_accuracy                      # LAYERTAP_WEIGHTS, default imagenet
    LAYERTAP_WEIGHTS=random .venv/bin/python -m bench.int8_accuracy

Both models are the service's own runners (same preprocessing, calibration and cache), fed the
sample photos of ``models/photos/`` and, to see more than four predictions, each photo mirrored and
zoomed in. Top-1 agreement only means something with trained weights: ``imagenet`` needs the
torch cache (``python -m service weights download`` where there is network). The int8
table in docs/hardware.md comes from this report.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from service.core.settings import SAMPLE_PHOTOS, Settings
from service.dataplane.plane import DataPlane
from service.modeling.entries import load_entry
from service.modeling.weights import resolve_weights
from service.runners.runner import ModelRunner
from stress.server import photo_files

from .__main__ import INT8_CACHE, ROOT


@dataclass
class Comparison:
    weights: str
    images: int
    cosine_min: dict[str, float]  # layer → worst cosine over the images
    top1_float: list[int]
    top1_int8: list[int]
    categories: tuple[str, ...] | None

    @property
    def agreement(self) -> float:
        return float(np.mean(np.array(self.top1_float) == np.array(self.top1_int8)))


def variants(photo: bytes) -> list[bytes]:
    """The photo as sent, then mirrored and its central 70% (a zoom) as lossless PNGs of its decoded pixels."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(photo))).convert("RGB")
    width, height = image.size
    zoom = image.crop((int(width * 0.15), int(height * 0.15), int(width * 0.85), int(height * 0.85)))
    out = [photo]
    for variant in (ImageOps.mirror(image), zoom):
        buffer = io.BytesIO()
        variant.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def compare(weights_spec: str, images: list[bytes], int8_cache: Path = INT8_CACHE) -> Comparison:
    """Run both precisions of the service's model runner over ``images``; every layer int8 serves."""
    base = Settings(weights=weights_spec, device="cpu", int8_cache_dir=int8_cache)
    entry = load_entry(base.model_repository, base.model_names[0])
    weights = resolve_weights(base.weights, entry, allow_download=False, seed=base.seed)  # read once, used twice
    planes = {}
    for precision in ("float32", "int8"):
        settings = base.model_copy(update={"precision": precision})
        planes[precision] = DataPlane(settings, [ModelRunner(settings, entry, weights)])
        planes[precision].start()
        if not planes[precision].wait_ready(300):
            raise RuntimeError(f"{precision} model did not load: {planes[precision].failure}")
    try:
        layers = tuple(layer.name for layer in planes["int8"].runner(None).layers)
        outputs = {p: plane.extract(images, layers).features for p, plane in planes.items()}
    finally:
        for plane in planes.values():
            plane.close()
    cosine_min = {}
    for name in layers:
        q = outputs["int8"][name].reshape(len(images), -1).astype(np.float64)
        f = outputs["float32"][name].reshape(len(images), -1).astype(np.float64)
        cosine_min[name] = float(((q * f).sum(1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(f, axis=1))).min())
    return Comparison(
        weights=weights.label,
        images=len(images),
        cosine_min=cosine_min,
        top1_float=outputs["float32"]["fc"].argmax(1).tolist(),
        top1_int8=outputs["int8"]["fc"].argmax(1).tolist(),
        categories=weights.categories,
    )


def report(result: Comparison, names: list[str]) -> str:
    label = (lambda i: result.categories[i]) if result.categories else str
    worst = min(result.cosine_min, key=result.cosine_min.get)
    lines = [
        f"# int8 vs float32, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"Weights: `{result.weights}`. Images: {result.images} ({SAMPLE_PHOTOS}, each also mirrored and zoomed).",
        "",
        f"- cosine, worst image: avgpool {result.cosine_min['avgpool']:.4f}, fc {result.cosine_min['fc']:.4f}, "
        f"worst layer `{worst}` {result.cosine_min[worst]:.4f}",
        f"- top-1 agreement: {result.agreement:.0%} of {result.images} images",
        "",
        "| image | float32 top-1 | int8 top-1 |",
        "| --- | --- | --- |",
    ]
    for name, f, q in zip(names, result.top1_float, result.top1_int8, strict=True):
        lines.append(f"| {name} | {label(f)} | {label(q)}{'' if f == q else ' (differs)'} |")
    lines += ["", "| layer | worst cosine |", "| --- | --- |"]
    lines += [f"| `{name}` | {value:.4f} |" for name, value in result.cosine_min.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=os.environ.get("LAYERTAP_WEIGHTS", "imagenet"))
    parser.add_argument("--out", default=str(ROOT / "bench-results"))
    args = parser.parse_args()
    images, names = [], []
    for path in photo_files():
        images += variants(path.read_bytes())
        names += [path.name, f"{path.name} mirrored", f"{path.name} zoomed"]
    text = report(compare(args.weights, images), names)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"int8-accuracy-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(text)


if __name__ == "__main__":
    main()
