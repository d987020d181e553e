"""The Markdown and JSON report of ``make bench``: tables, ratios, and the targets they are held to."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import overload
from bench.torchserve import TorchServe
from service.core.hardware import cpu_flags
from service.core.settings import SAMPLE_PHOTOS

ONE_WORKER = "layers=avgpool (1 worker)"  # the same service with LAYERTAP_WORKERS=1, in the same run
EMBEDDINGS = "v1 embeddings, base64"  # OpenAI's /v1/embeddings, one data URL per request, as the openai client
# At the most clients: the service against the in-process pipeline in its dtype, for these requests.
HELD_TO_IN_PROCESS = ("layers=avgpool", "layers=layer4", "layers=layer1&encoding=base64")


@dataclass
class Cell:
    layers: str
    query: str
    concurrency: int
    requests: int
    errors: int
    img_s: float
    p50_ms: float
    p99_ms: float
    limit_img_s: float
    ratio: float
    ratio_channels_last: float
    torchserve_img_s: float | None = None  # TorchServe in the service's dtype, same run
    torchserve_float32_img_s: float | None = None


def report(
    limit: dict,
    cells: list[Cell],
    goodputs: tuple[list, list],
    torchserve: dict[str, dict],
    info: dict,
    idle: tuple[float, float],  # MB: the service (master and workers), and its largest worker
    peak: float,
    out: Path,
    sections: tuple[list[str], ...] = (),
    extra_checks: tuple[str, ...] = (),
) -> None:
    """Print and write the report; ``sections`` are further Markdown sections (explanations), before the targets,
    and ``extra_checks`` further lines of the targets list."""
    goodput, no_wait = goodputs
    flags = cpu_flags()
    lines = [
        f"# layertap benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"Machine: {os.cpu_count()} cores; CPU flags: {', '.join(flags) or 'none of avx2, avx512*, amx*'}; "
        "torch threads per worker = cores ÷ workers (every core while the other workers are idle). "
        f"Photos: {SAMPLE_PHOTOS}. "
        "Weights: seeded random (speed does not depend on them).",
        f"The service ran with its defaults: dtype {info['dtype']}, preprocessing {info['preprocessing']['mode']}, "
        f"device {info['device']}.",
        "",
        "## In-process pipeline (decode + preprocess + forward at batch 16, no HTTP), img/s",
        "",
        "`service` is what the service runs in float32: channels_last with batch norms folded where the layer "
        "allows; `bfloat16` is the same in bfloat16 (fast where the CPU has AMX or AVX-512 BF16).",
        "",
        "| layer | NCHW | channels_last | service | bfloat16 |",
        "| --- | --- | --- | --- | --- |",
    ]
    variants = limit["variants"]
    for layer in variants["service"]:
        lines.append(
            f"| {layer} | {variants['nchw'][layer]:.1f} | {variants['channels_last'][layer]:.1f} | "
            f"{variants['service'][layer]:.1f} | {variants['bfloat16'][layer]:.1f} |"
        )
    lines += [
        "",
        f"Single image, in process (decode + preprocess + forward, avgpool): p50 {limit['single_image_ms']:.1f} ms; "
        f"preprocess alone, mean over the photos: {limit['preprocess_fast_ms']:.2f} ms "
        f"(`LAYERTAP_PREPROCESSING=exact`: {limit['preprocess_exact_ms']:.2f} ms).",
        "",
        f"## Service over loopback (gunicorn, {info.get('workers', 1)} worker(s)), and TorchServe in the same run",
        "",
        *[
            f"- TorchServe {TorchServe.version}, {peer['dtype']}: {peer['workers']} worker × {peer['threads']} torch "
            "threads, batch 16, 5 ms (bench/torchserve_handler.py); its avgpool answer's cosine to layertap's: "
            f"{peer['cosine_to_layertap']:.6f}."
            if "skipped" not in peer
            else f"- TorchServe {peer['dtype']} skipped: {peer['skipped']}"
            for peer in torchserve.values()
        ],
        "",
        f"| request | clients | img/s | p50 ms | p99 ms | errors | × in-process, same path and dtype | "
        f"× in-process float32 channels_last | TorchServe {info['dtype']} img/s | × it | TorchServe float32 | × it |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cells:
        peer = " | ".join(
            f"{other:.1f} | {c.img_s / other:.2f}" if other else " | "
            for other in (c.torchserve_img_s, c.torchserve_float32_img_s)
        )
        lines.append(
            f"| `{c.query}` | {c.concurrency} | {c.img_s:.1f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.errors} | "
            f"{c.ratio:.2f} | {c.ratio_channels_last:.2f} | {peer} |"
        )
    lines += [
        "",
        "## Overload: clients that ignore Retry-After (`layers=avgpool`)",
        "",
        "With the default admission wait (`LAYERTAP_MAX_QUEUE_WAIT_MS`):",
        "",
        *overload.table(goodput),
        "",
        "The same service refusing at once (`LAYERTAP_MAX_QUEUE_WAIT_MS=0`), in the same run:",
        "",
        *overload.table(no_wait),
        "",
        f"RSS of the service (master + workers): idle {idle[0]:.0f} MB, peak {peak:.0f} MB.",
        "",
    ]
    by = {(c.query, c.concurrency): c for c in cells}
    checks = []
    top = max(c.concurrency for c in cells)
    if ("layers=avgpool", 1) in by:
        gap = by[("layers=avgpool", 1)].p50_ms - limit["single_image_ms"]
        checks.append(f"single-client p50 − in-process single image = {gap:+.1f} ms (target ≤ 5)")
        if (ONE_WORKER, 1) in by:
            ours, one = by[("layers=avgpool", 1)].p50_ms, by[(ONE_WORKER, 1)].p50_ms
            checks.append(
                f"single-client p50 {ours:.1f} ms, against {one:.1f} ms with one worker of every core: "
                f"×{ours / one:.2f} (target ≤ 1.05: no worse, within the run's noise)"
            )
    for query in HELD_TO_IN_PROCESS:
        if (query, top) in by:
            checks.append(
                f"`{query}`, {top} clients: ×{by[(query, top)].ratio:.2f} of the in-process pipeline in the "
                "service's dtype (target ≥ 0.9)"
            )
    for c in sorted((c for c in cells if c.query == "layers=avgpool"), key=lambda c: c.concurrency):
        if c.torchserve_img_s:
            checks.append(
                f"avgpool, {c.concurrency} clients: ×{c.img_s / c.torchserve_img_s:.2f} of TorchServe in the same "
                "dtype (target ≥ 1.2)"
            )
    if ("layers=avgpool", top) in by:
        cell = by[("layers=avgpool", top)]
        checks.append(
            f"avgpool, {top} clients: ×{cell.ratio_channels_last:.2f} of in-process float32 channels_last"
            + (
                f", ×{cell.img_s / cell.torchserve_float32_img_s:.2f} of TorchServe in float32"
                if cell.torchserve_float32_img_s and info["dtype"] != "float32"
                else ""
            )
        )
        in_process = limit["variants"]["bfloat16" if info["dtype"] == "bfloat16" else "service"]
        for query in ("layers=layer1", "layers=layer1&encoding=base64"):
            if (query, top) in by:
                target = " (target ≥ 1: early exit shows)" if "base64" in query else " (JSON of 200,704 values each)"
                checks.append(
                    f"`{query}` ÷ avgpool throughput at {top} clients: ×{by[(query, top)].img_s / cell.img_s:.2f}"
                    f"{target}; in process ×{in_process['layer1'] / in_process['avgpool']:.2f}"
                )
    for c in sorted((c for c in cells if c.query == EMBEDDINGS), key=lambda c: c.concurrency):
        features_base64 = by.get(("layers=avgpool&encoding=base64", c.concurrency))
        if features_base64:
            checks.append(
                f"OpenAI's /v1/embeddings (base64), {c.concurrency} clients: "
                f"×{c.img_s / features_base64.img_s:.2f} of /features?layers=avgpool&encoding=base64 (target ≥ 0.95)"
            )
    for c in sorted((c for c in cells if c.query.startswith("v2 binary ")), key=lambda c: c.concurrency):
        features_base64 = by.get((f"layers={c.layers}&encoding=base64", c.concurrency))
        if features_base64:
            checks.append(
                f"Open Inference Protocol, binary, {c.layers}, {c.concurrency} clients: "
                f"×{c.img_s / features_base64.img_s:.2f} of /features with encoding=base64 (target ≥ 1)"
            )
    if ("layers=avgpool (int8)", top) in by and ("layers=avgpool", top) in by:
        int8_cell, float_cell = by[("layers=avgpool (int8)", top)], by[("layers=avgpool", top)]
        checks.append(
            f"int8 avgpool, {top} clients: ×{int8_cell.img_s / float_cell.img_s:.2f} of the default service; "
            f"in process int8 {limit['int8_avgpool']:.0f} img/s"
        )
    worst = min((row.ratio for row in goodput[1:]), default=None)
    if worst is not None:
        checks.append(f"overload goodput: worst ×{worst:.2f} of the 4-client capacity (target ≥ 0.8)")
    service = limit["variants"]["service"]
    if "layer1" in service and "avgpool" in service:
        checks.append(
            f"in process, layer1 ÷ avgpool: ×{service['layer1'] / service['avgpool']:.2f} (the early-exit gain)"
        )
    checks.append(
        f"idle RSS {idle[1]:.0f} MB per worker (target ≤ 800); {idle[0]:.0f} MB for the service, master and "
        f"{info.get('workers', 1)} worker(s)"
    )
    checks += extra_checks
    for section in sections:
        lines += section
    lines += ["## Against the targets", "", *[f"- {c}" for c in checks], ""]
    text = "\n".join(lines)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"bench-{stamp}.md").write_text(text)
    record = {
        "cpu_flags": flags,
        "in_process": limit,
        "cells": [asdict(c) for c in cells],
        "overload": [asdict(row) for row in goodput],
        "overload_without_wait": [asdict(row) for row in no_wait],
        "torchserve": torchserve,
        "rss_idle_mb": idle[0],
        "rss_idle_worker_mb": idle[1],
        "rss_peak_mb": peak,
    }
    (out / f"bench-{stamp}.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"written to {out}/bench-{stamp}.md")
