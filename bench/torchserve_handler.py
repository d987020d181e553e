"""A TorchServe handler that returns ResNet18 ``avgpool`` embeddings: the peer layertap is measured against.

It runs inside TorchServe (bench/torchserve.py archives it), and is written to be as fast as a
careful TorchServe user would make it, so that the comparison flatters nobody:

- TorchServe batches requests (``batchSize`` 16, ``maxBatchDelay`` 5 ms) and hands them over in one call;
- JPEGs are decoded with libjpeg's draft scaling and resized with torch's antialiased uint8 kernel
  (what layertap's ``fast`` preprocessing does), then normalized once per batch;
- channels_last, ``inference_mode``, torch threads = the cores given to the one worker;
- the dtype layertap runs in (``TS_DTYPE``: bfloat16 where the CPU has bf16 arithmetic), outputs float32;
- the classifier is replaced by ``Identity``, so the forward pass stops at ``avgpool``;
- responses are rendered with orjson when it is importable.

It imports only torch, torchvision, Pillow and numpy besides TorchServe's own ``ts`` package.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

try:
    import orjson

    def _dumps(value) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
except ImportError:  # pragma: no cover - orjson is optional

    def _dumps(value) -> bytes:
        return json.dumps(value.tolist()).encode()


RESIZE, CROP = 256, 224
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


class AvgpoolEmbeddings:
    """TorchServe's handler protocol: ``initialize(context)`` once, ``handle(data, context)`` per batch."""

    def __init__(self):
        self.model = None
        self.dtype = torch.float32

    def initialize(self, context) -> None:
        torch.set_num_threads(int(os.environ.get("TS_TORCH_THREADS", "1")))
        model_dir = context.system_properties["model_dir"]
        model = torchvision.models.resnet18()
        model.load_state_dict(torch.load(os.path.join(model_dir, "weights.pt"), weights_only=True))
        model.fc = torch.nn.Identity()
        self.dtype = getattr(torch, os.environ.get("TS_DTYPE", "float32"))
        self.model = model.eval().to(dtype=self.dtype, memory_format=torch.channels_last)
        with torch.inference_mode():  # first-pass allocations and kernel choice, before traffic
            self.model(torch.zeros(1, 3, CROP, CROP, dtype=self.dtype).to(memory_format=torch.channels_last))

    def handle(self, data: list[dict], context) -> list[bytes]:  # noqa: ARG002 - TorchServe's signature
        pixels = np.stack([_preprocess(row.get("data") or row.get("body")) for row in data])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().sub_(MEAN).div_(STD).to(self.dtype)
        with torch.inference_mode():
            embeddings = self.model(batch).float().numpy()
        return [_dumps(row) for row in embeddings]


def _preprocess(data: bytes) -> np.ndarray:
    """Decode, resize the shorter side to 256 (antialiased), center-crop 224: uint8 HWC."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    scale = RESIZE / min(width, height)
    size = (max(RESIZE, int(width * scale)), max(RESIZE, int(height * scale)))
    image.draft("RGB", size)
    image = image.convert("RGB")
    source = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(source, size=(size[1], size[0]), mode="bilinear", antialias=True)
    top, left = round((size[1] - CROP) / 2), round((size[0] - CROP) / 2)
    return resized[0, :, top : top + CROP, left : left + CROP].permute(1, 2, 0).numpy()


_service = AvgpoolEmbeddings()


def handle(data, context):
    """TorchServe's module-level entry point."""
    if _service.model is None:  # TorchServe calls handle(None, context) once when it loads the model
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
