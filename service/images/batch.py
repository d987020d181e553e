"""The model's input batch: images prepared in request threads, assembled on the model's device in its thread.

An image reaches the data plane in one of three forms (service/images/sources.py): encoded bytes,
decoded :class:`Pixels` (resized and cropped here like a decoded upload) or a :class:`Tensor`
(already resized, cropped and normalized by the client: used as it is).

Decoding is split in two. A request thread calls :meth:`Inputs.prepare` on each image: every
limit is checked from the header, and the image is either decoded there with Pillow (pixels,
``(crop, crop, 3)`` uint8) or, when the device decodes JPEGs (``LAYERTAP_JPEG_DECODER``, CUDA by
default), left encoded for the model thread. The model thread calls :meth:`Inputs.assemble` on a
whole batch: pixels travel to the device as one block, JPEGs are decoded there in one call
(service/images/jpeg.py), the block is normalized as torchvision does (x/255, then (x-mean)/std:
service/images/normalize.py) and client tensors take their slots: one float32 ``(n, 3, crop, crop)`` tensor.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from service.core.errors import InvalidImage, ServiceError
from service.images.jpeg import EncodedJpeg, JpegBatchDecoder, inspect_jpeg
from service.images.normalize import normalize
from service.images.preprocess import ImagePreprocessor
from service.images.sources import ImageInput, Pixels, Tensor

# After prepare(): (crop, crop, 3) uint8 pixels, a JPEG left for the device, or a client's tensor.
Prepared = np.ndarray | EncodedJpeg | Tensor


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

    def decoding_bytes(self, image: ImageInput) -> int:
        """The memory preparing ``image`` in a request thread takes at its peak, from its header alone."""
        if isinstance(image, Pixels | Tensor):
            return image.array.nbytes
        return self.preprocess.decoded_bytes(image)

    def prepare(self, image: ImageInput) -> Prepared:
        """Request thread: every limit checked, then the pixels, the JPEG left for the device, or the tensor."""
        if isinstance(image, Pixels):
            return self.preprocess.from_pixels(image.array)
        if isinstance(image, Tensor):
            return self._check_tensor(image)
        if self._decoder is not None:
            jpeg = inspect_jpeg(image, self.preprocess)
            if jpeg is not None:
                return jpeg
        return self.preprocess(image)

    def _check_tensor(self, tensor: Tensor) -> Tensor:
        expected = (3, self.crop, self.crop)
        if tensor.array.shape != expected or tensor.array.dtype != np.float32:
            raise InvalidImage(
                f"an input tensor must be float32 of shape {list(expected)} (resized, cropped and normalized "
                f"for this model), not {tensor.array.dtype} {list(tensor.array.shape)}"
            )
        if not np.isfinite(tensor.array).all():
            raise InvalidImage("an input tensor holds NaN or infinite values")
        return tensor

    def assemble(self, images: list[Prepared]) -> tuple[torch.Tensor, dict[int, ServiceError]]:
        """Model thread: the batch as normalized float32 ``(n, 3, crop, crop)`` on the device, and the images
        that failed.

        Pixels travel as one NHWC uint8 block (pinned on CUDA) viewed as NCHW, which is channels_last
        in memory: no copy on the CPU, and a quarter of float32's bytes to the device. A JPEG that
        nothing can decode fails alone, its slot left black.
        """
        arrays = [i for i, image in enumerate(images) if isinstance(image, np.ndarray)]
        host = torch.from_numpy(np.stack([images[i] for i in arrays])) if arrays else None
        if host is not None and self.device.type == "cuda":
            host = host.pin_memory().to(self.device, non_blocking=True)
        failures: dict[int, ServiceError] = {}
        if len(arrays) == len(images):
            return self._normalize(host.permute(0, 3, 1, 2)), failures
        pixels = torch.zeros((len(images), 3, self.crop, self.crop), dtype=torch.uint8, device=self.device)
        if host is not None:
            pixels[arrays] = host.permute(0, 3, 1, 2)
        jpegs = [i for i, image in enumerate(images) if isinstance(image, EncodedJpeg)]
        if jpegs:
            for i, decoded in zip(jpegs, self._decoder([images[i] for i in jpegs]), strict=True):
                if isinstance(decoded, ServiceError):
                    failures[i] = decoded
                else:
                    pixels[i] = decoded
        batch = self._normalize(pixels)
        tensors = [i for i, image in enumerate(images) if isinstance(image, Tensor)]
        if tensors:
            batch[tensors] = torch.from_numpy(np.stack([images[i].array for i in tensors])).to(self.device)
        return batch, failures

    def _normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``(n, 3, h, w)`` on the device → float32 as torchvision's transforms do it (one copy)."""
        return normalize(pixels, self.preprocess.spec.mean, self.preprocess.spec.std)

    def warm_up(self) -> torch.Tensor:
        """A batch for the warm-up pass: black pixels, and a JPEG when the device decodes them (nvjpeg starts late)."""
        images: list[Prepared] = [np.zeros((self.crop, self.crop, 3), dtype=np.uint8)]
        if self._decoder is not None:
            data = io.BytesIO()
            Image.new("RGB", (320, 240), (90, 120, 150)).save(data, "JPEG")
            images.append(inspect_jpeg(data.getvalue(), self.preprocess))
        return self.assemble(images)[0]
