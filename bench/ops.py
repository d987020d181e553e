"""What op layers cost, in process, in one run: ``python -m bench.ops`` (``make bench`` runs it).

ResNet-50 (random weights, the service's placement: channels_last, the CPU's fast dtype), a batch of
16 at 224×224, each pass to ``layer4``, through the service's own tap (service/modeling/tap.py):

- **without op layers, before**: a tap built without op naming, as every tap was before op layers;
- **without op layers, after**: a tap that serves op layers, after passes that asked for them (its
  scope hooks are installed), asked for ``layer4`` alone: the watch is off, this must cost the same;
- **one op layer**: ``layer4`` and ``layer3.5.add``;
- **ten op layers**: ``layer4`` and ten residual sums;
- **ten module layers**, for scale: the outputs of the same ten blocks, from the plain tap. Copying ten
  maps this large is most of what ten layers cost, op or module.

The cells take turns, ``--rounds`` times, and the report gives the median milliseconds per pass
and the ratio to the first cell. Targets (issue 27): ×1.0 without op layers, at most ×1.3 with them.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

from service.core import hardware
from service.modeling.build import place
from service.modeling.ops import OpNamer
from service.modeling.shapes import meta_copy
from service.modeling.tap import LayerTap

BLOCKS = tuple(f"layer{stage}.{block}" for stage, blocks in ((1, 3), (2, 4), (3, 3)) for block in range(blocks))
TEN = tuple(f"{block}.add" for block in BLOCKS)
CELLS = {
    "without op layers, before": ("plain", ("layer4",)),
    "without op layers, after": ("ops", ("layer4",)),
    "one op layer": ("ops", ("layer4", "layer3.5.add")),
    "ten op layers": ("ops", ("layer4", *TEN)),
    # the same ten blocks' outputs, modules: what copying ten maps of these sizes costs without any op watch
    "ten module layers (for scale)": ("plain", ("layer4", *BLOCKS)),
}


def taps(dtype: str) -> dict[str, LayerTap]:
    torch.manual_seed(0)
    model = place(torchvision.models.resnet50().eval(), torch.device("cpu"), dtype, True)
    namer = OpNamer(meta_copy(model))
    with torch.inference_mode():
        traced = LayerTap(meta_copy(model), ops=namer).trace(torch.empty(1, 3, 224, 224, device="meta"), ops=True)
    sites = {call.name: call.site for call in traced if call.op is not None}
    twin = copy.deepcopy(model)  # the same weights, with hooks of its own
    return {"plain": LayerTap(model), "ops": LayerTap(twin, ops=namer, sites=sites.get)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3, help="passes per cell and round")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    flags = hardware.cpu_flags()
    dtype = hardware.compute_dtype("auto", "float32", "cpu", flags)
    tapped = taps(dtype)
    dtype_of = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    x = torch.randn(args.batch, 3, 224, 224).to(dtype_of).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {cell: [] for cell in CELLS}
    with torch.inference_mode():
        for tap_kind, layers in CELLS.values():  # warm-up, and the op tap's scope hooks get installed
            tapped[tap_kind].capture(x, frozenset(layers))
        tapped["ops"].capture(x, frozenset(TEN))
        for number in range(args.rounds):
            order = list(CELLS) if number % 2 == 0 else list(reversed(CELLS))
            for cell in order:
                tap_kind, layers = CELLS[cell]
                for _ in range(args.passes):
                    started = time.perf_counter()
                    tapped[tap_kind].capture(x, frozenset(layers))
                    times[cell].append(time.perf_counter() - started)
    base = statistics.median(times["without op layers, before"])
    shown = ", ".join(sorted(flag for flag in flags if flag.startswith(("amx", "avx512_bf16"))))
    threads = torch.get_num_threads()
    print(f"\nResNet-50, batch {args.batch}, to layer4, {dtype}, {threads} threads ({shown or 'no AMX'})")
    print("| pass | ms per pass (median) | ratio |")
    print("| --- | --- | --- |")
    for cell, values in times.items():
        median = statistics.median(values)
        print(f"| {cell} | {median * 1000:.1f} | ×{median / base:.3f} |")


if __name__ == "__main__":
    main()
