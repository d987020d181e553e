"""Explanations in ``make bench``: ``/explain`` per method through the service, and its cost against a forward pass.

1. Through the running service: img/s and p50 per method (the CAM methods at ``layer4``,
   integrated gradients with 16 steps) at 1 and 4 clients, beside ``/features?layers=fc``.
2. In process, in float32 (the dtype explanations run in), at the same batch size (8, the
   explain batch): the model thread's time for a Grad-CAM batch against a forward pass to ``fc``
   (the issue's target: at most 3×), from the runner's own timings.

``python -m bench.explain`` runs the in-process part alone.
"""

from __future__ import annotations

import statistics

from stress.load import drive, percentile, raw_posts
from stress.server import sample_photos

QUERIES = {
    "features fc": "/features?layers=fc",
    "gradcam": "/explain?method=gradcam&layer=layer4&encoding=base64",
    "gradcam++": "/explain?method=gradcam%2B%2B&layer=layer4&encoding=base64",
    "layercam": "/explain?method=layercam&layer=layer4&encoding=base64",
    "hirescam": "/explain?method=hirescam&layer=layer4&encoding=base64",
    "integrated_gradients (16 steps)": "/explain?method=integrated_gradients&steps=16&encoding=base64",
}


def service_rows(url: str, images: list[bytes], clients: tuple[int, ...], seconds: float) -> list[dict]:
    """Each query at each client count: img/s (answers inside the time) and p50, as dicts."""
    rows = []
    for label, path in QUERIES.items():
        requests_ = raw_posts(path, images)
        drive(url, requests_, 1, 1)  # warm: the float32 copy, first shapes
        for count in clients:
            good, errors = drive(url, requests_, count, seconds)
            row = {
                "query": label,
                "clients": count,
                "img_s": len(good) / seconds,
                "p50_ms": percentile(good, 0.5) * 1000,
                "errors": errors,
            }
            rows.append(row)
            print(f"  {label:32s} c={count:<2d} {row['img_s']:6.1f} img/s  p50 {row['p50_ms']:7.1f} ms", flush=True)
    return rows


def in_process(batch: int = 8, repeats: int = 5) -> dict:
    """Model-thread milliseconds per batch of ``batch`` images, float32: Grad-CAM at layer4 and layer1, and fc."""
    from service.app import create_app
    from service.core.settings import Settings

    app = create_app(Settings(weights="random", device="cpu", dtype="float32", log_level="warning"))
    plane = app.extensions["layertap.dataplane"]
    try:
        assert plane.wait_ready(120), plane.failure
        photos = sample_photos()
        images = [photos[i % len(photos)] for i in range(batch)]
        timings: dict[str, list[float]] = {"forward to fc": [], "gradcam layer4": [], "gradcam layer1": []}
        for _ in range(repeats + 1):  # the first round warms up
            timings["forward to fc"].append(plane.extract(images, ("fc",)).timings.inference_ms)
            for layer in ("layer4", "layer1"):
                result = plane.explain(images, "gradcam", layer)
                timings[f"gradcam {layer}"].append(result.timings.inference_ms)
        medians = {name: statistics.median(values[1:]) for name, values in timings.items()}
    finally:
        plane.close()
    return {"batch": batch, "ms": medians}


def markdown(rows: list[dict], cost: dict) -> list[str]:
    """The report's section: the service rows, then the in-process cost ratios."""
    fc = {row["clients"]: row["img_s"] for row in rows if row["query"] == "features fc"}
    lines = ["## Explanations (`/explain`, float32; `/features` in the service's dtype)", ""]
    if rows:
        lines += ["| query | clients | img/s | p50 ms | errors | × fc time |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ratio = fc[row["clients"]] / row["img_s"] if row["img_s"] else float("inf")
        lines.append(
            f"| {row['query']} | {row['clients']} | {row['img_s']:.1f} | {row['p50_ms']:.1f} | {row['errors']} | "
            f"{ratio:.2f} |"
        )
    forward = cost["ms"]["forward to fc"]
    lines += [
        "",
        f"In process, float32, batch {cost['batch']}, the model thread's time per batch: forward to fc "
        f"{forward:.0f} ms; "
        + "; ".join(
            f"{name} {ms:.0f} ms (×{ms / forward:.2f}, target ≤ 3)"
            for name, ms in cost["ms"].items()
            if name != "forward to fc"
        ),
        "",
    ]
    return lines


def target_check(cost: dict) -> str:
    """The issue's target, as a line of the report's checks."""
    forward = cost["ms"]["forward to fc"]
    worst = max(ms / forward for name, ms in cost["ms"].items() if name != "forward to fc")
    batch = cost["batch"]
    return f"explain: a Grad-CAM batch costs at most ×{worst:.2f} a forward pass to fc at batch {batch} (target ≤ 3)"


if __name__ == "__main__":
    print("\n".join(markdown([], in_process())))
