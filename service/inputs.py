"""The model's input batch: images prepared in request threads, assembled on the model's device in its thread.

Decoding is split in two. A request thread calls :meth:`Inputs.prepare` on each upload: every
limit is checked from the header, and the image is either decoded there with Pillow (pixels,
``(crop, crop, 3)`` uint8) or, when the device decodes JPEGs (``LAYERTAP_JPEG_DECODER``, CUDA by
default), left encoded for the model thread. The model thread calls :meth:`Inputs.assemble` on a
whole batch: pixels travel to the device as one block, JPEGs are decoded there in one call
(service/gpu_decode.py), and the result is one uint8 ``(n, 3, crop, crop)`` tensor.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from .errors import ServiceError
from .gpu_decode import EncodedJpeg, JpegBatchDecoder, inspect_jpeg
from .preprocess import ImagePreprocessor

Prepared = np.ndarray | EncodedJpeg


class Inputs:
    """One model's image preparation (request threads) and batch assembly (its model thread)."""

    def __init__(self, preprocess: ImagePreprocessor, device: torch.device, decode_jpegs_on_device: bool):
        self.preprocess = preprocess
        self.device = device
        self.crop = preprocess.spec.crop
        self._decoder = (
            JpegBatchDecoder(preprocess.spec, device, fallback=preprocess) if decode_jpegs_on_device else None
        )

    @property
    def jpeg_decoder(self) -> str:
        """Where JPEGs are decoded: ``device`` (the model thread, in batches) or ``pillow`` (request threads)."""
        return "device" if self._decoder is not None else "pillow"

    def prepare(self, data: bytes) -> Prepared:
        """Request thread: the limits from the header, then the pixels, or the JPEG left for the device."""
        if self._decoder is not None:
            jpeg = inspect_jpeg(data, self.preprocess)
            if jpeg is not None:
                return jpeg
        return self.preprocess(data)

    def assemble(self, images: list[Prepared]) -> tuple[torch.Tensor, dict[int, ServiceError]]:
        """Model thread: the batch as uint8 ``(n, 3, crop, crop)`` on the device, and the images that failed.

        Pixels travel as one NHWC block (pinned on CUDA) viewed as NCHW, which is channels_last in
        memory: no copy on the CPU. A JPEG that nothing can decode fails alone, its slot left black.
        """
        arrays = [i for i, image in enumerate(images) if isinstance(image, np.ndarray)]
        host = torch.from_numpy(np.stack([images[i] for i in arrays])) if arrays else None
        if host is not None and self.device.type == "cuda":
            host = host.pin_memory().to(self.device, non_blocking=True)
        if len(arrays) == len(images):
            return host.permute(0, 3, 1, 2), {}
        batch = torch.zeros((len(images), 3, self.crop, self.crop), dtype=torch.uint8, device=self.device)
        if host is not None:
            batch[arrays] = host.permute(0, 3, 1, 2)
        jpegs = [i for i, image in enumerate(images) if not isinstance(image, np.ndarray)]
        failures: dict[int, ServiceError] = {}
        for i, decoded in zip(jpegs, self._decoder([images[i] for i in jpegs]), strict=True):
            if isinstance(decoded, ServiceError):
                failures[i] = decoded
            else:
                batch[i] = decoded
        return batch, failures

    def warm_up(self) -> torch.Tensor:
        """A batch for the warm-up pass: black pixels, and a JPEG when the device decodes them (nvjpeg starts late)."""
        images: list[Prepared] = [np.zeros((self.crop, self.crop, 3), dtype=np.uint8)]
        if self._decoder is not None:
            data = io.BytesIO()
            Image.new("RGB", (320, 240), (90, 120, 150)).save(data, "JPEG")
            images.append(inspect_jpeg(data.getvalue(), self.preprocess))
        return self.assemble(images)[0]
