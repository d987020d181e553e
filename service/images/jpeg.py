"""JPEG bytes → the model's input pixels on the model's device (nvjpeg on a GPU), a whole batch at once.

Why: on a CUDA device, Pillow's decode and resize in the request threads cost more CPU than the
model itself; nvjpeg decodes a batch of JPEGs in one call (on the hardware JPEG engine of
A100/H100-class GPUs, in CUDA kernels elsewhere), and the resize is then a few kernels too.

How: a request thread calls :func:`inspect_jpeg`, which reads the header only, so every limit of
:class:`ImagePreprocessor` holds and fails with the same 4xx errors before a pixel is decoded. It
answers ``None`` for what the CPU path should keep: other formats; CMYK and RGB-coded JPEGs (nvjpeg
refuses the first and silently decodes the second as YCbCr); files that do not end with an
end-of-image marker (nvjpeg decodes a truncated file into garbage without a word); shapes whose
resize would be huge. The model thread hands the accepted :class:`EncodedJpeg` to a
:class:`JpegBatchDecoder`, which decodes them with one ``torchvision.io.decode_jpeg`` call, applies
the EXIF orientation (torchvision does so only on CPU, so it is done here, as Pillow's
``exif_transpose`` does), resizes the shorter side with antialiasing and center-crops as
``ImagePreprocessor`` does: within a level of its pixels on average (nvjpeg upsamples chroma
differently from libjpeg), cosine ≥ 0.9995 on pooled features.

Failures: nvjpeg fails a whole batch for one file it refuses. The decoder then retries image by
image, and what nvjpeg still refuses goes to the CPU preprocessor, which decodes it (a JPEG flavour
nvjpeg lacks) or raises the InvalidImage the CPU path would. So a bad file costs the client its own
image only, as a domain error, never a RuntimeError, and never its batch neighbours. (Damage inside
the entropy-coded data, header and end marker intact, nvjpeg decodes into damaged pixels, as libjpeg
does with some damage; only libjpeg's stricter cases become InvalidImage on CPU.)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from service.core.errors import ServiceError
from service.images.preprocess import ImagePreprocessor
from service.images.recipe import Preprocessing

# torchvision 0.29 deprecates its decoders in favour of TorchCodec (which would be a new
# dependency); the call is the same until then, and a warning per batch helps no operator.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io\.image")

# Where the resized image (before the crop) would be larger, the CPU path takes it: it resamples
# only the cropped region, while resizing a 1×1000 strip here would make a 256×256000 intermediate.
MAX_RESIZED_PIXELS = 1 << 22
# Decoded pixels one decoder call may hold by default (3 bytes each: 192 MB): a batch of 64 photos of
# 40 Mpx would otherwise need 7.7 GB of GPU memory at once, kept by the caching allocator afterwards.
DECODE_PIXELS = 64_000_000
_EXIF_ORIENTATION = 0x0112
_END_OF_IMAGE = b"\xff\xd9"
# EXIF orientation → the transposition that puts a (C, H, W) image upright, as ImageOps.exif_transpose.
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),  # FLIP_LEFT_RIGHT
    3: lambda x: x.flip(-2, -1),  # ROTATE_180
    4: lambda x: x.flip(-2),  # FLIP_TOP_BOTTOM
    5: lambda x: x.transpose(-2, -1),  # TRANSPOSE
    6: lambda x: x.rot90(-1, (-2, -1)),  # ROTATE_270 (clockwise)
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),  # TRANSVERSE
    8: lambda x: x.rot90(1, (-2, -1)),  # ROTATE_90 (counter-clockwise)
}


@dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG whose header passed every limit: its bytes, stored size and EXIF orientation (1..8)."""

    data: bytes
    width: int
    height: int
    orientation: int = 1


def inspect_jpeg(data: bytes, preprocessor: ImagePreprocessor) -> EncodedJpeg | None:
    """Check ``data``'s header as the CPU path does (same errors); ``None``: leave it to the CPU path."""
    image = preprocessor.open_header(data)
    # Pillow calls a JPEG with a multi-picture index (phone cameras) MPO; its first picture is the
    # one Pillow decodes, and the one JPEG decoders read, stopping at its end-of-image marker.
    if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
        return None
    if image.mode == "RGB" and not _ycbcr_coded(image):
        return None  # nvjpeg would take its R, G, B for Y, Cb, Cr: wrong colours, and no error
    width, height = image.size
    if not _gpu_friendly(data, width, height, preprocessor.spec):
        return None
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)  # parsed from the header, no pixels
        orientation = orientation if orientation in _ORIENT else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block leaves the image as stored, as on the CPU path
        orientation = 1
    return EncodedJpeg(data, width, height, int(orientation))


class JpegBatchDecoder:
    """Callable: a batch of :class:`EncodedJpeg` → per image a ``(3, crop, crop)`` uint8 tensor on
    ``device``, or the :class:`ServiceError` the CPU path gives for it.

    ``fallback`` is the CPU preprocessor for the same spec (bytes → ``(crop, crop, 3)`` uint8 array).
    ``decode_pixels`` bounds the decoded pixels one decoder call holds (:meth:`groups`).
    Call it from one thread (the model thread): it synchronizes the current CUDA stream.
    """

    def __init__(
        self,
        spec: Preprocessing,
        device: torch.device,
        fallback: Callable[[bytes], np.ndarray],
        decode_pixels: int = DECODE_PIXELS,
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.fallback = fallback
        self.decode_pixels = decode_pixels

    def __call__(self, images: list[EncodedJpeg]) -> list[torch.Tensor | ServiceError]:
        results: dict[int, torch.Tensor | ServiceError] = {}
        for group in self.groups(images):
            decoded = self._decode([images[i].data for i in group])
            for k, i in enumerate(group):
                pixels, decoded[k] = decoded[k], None  # each full-size image is freed once resized
                image = images[i]
                if pixels is not None and pixels.shape == (3, image.height, image.width):
                    results[i] = self._resize_and_crop(_ORIENT.get(image.orientation, lambda x: x)(pixels))
        return [results[i] if i in results else self._on_cpu(image.data) for i, image in enumerate(images)]

    def groups(self, images: list[EncodedJpeg]) -> list[list[int]]:
        """The indices of the images the device decodes, in groups of at most ``decode_pixels`` pixels (at least
        one image each): one decoder call per group, so that a batch of large photos never holds more than
        that many decoded pixels at once. The images left out go to the CPU path."""
        groups: list[list[int]] = []
        pixels = self.decode_pixels
        for i, image in enumerate(images):
            if not _gpu_friendly(image.data, image.width, image.height, self.spec):
                continue
            size = image.width * image.height
            if pixels + size > self.decode_pixels:
                groups.append([])
                pixels = 0
            groups[-1].append(i)
            pixels += size
        return groups

    def _decode(self, encoded: list[bytes]) -> list[torch.Tensor | None]:
        """Decode all in one call; if one file fails it, each alone (``None`` where that fails too)."""
        if not encoded:
            return []
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
        try:
            return list(self._decode_jpeg(tensors))
        except Exception:  # noqa: BLE001 - nvjpeg/libjpeg raise RuntimeError for any bad file in the batch
            pass
        out: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                out.append(self._decode_jpeg([tensor])[0])
            except Exception:  # noqa: BLE001 - the CPU path will say what is wrong with it
                out.append(None)
        return out

    def _decode_jpeg(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.device.type == "cuda":
            # torchvision allocates the outputs on the current stream but nvjpeg writes them from its
            # own stream without waiting for it (pytorch/vision#9606): a block freed by kernels still
            # queued here could be overwritten. Decoding host-synchronizes anyway; this only waits earlier.
            torch.cuda.current_stream(self.device).synchronize()
        return decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device)

    def _resize_and_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImagePreprocessor's ``resize(shorter side)`` then ``center_crop``, on a (3, H, W) uint8 tensor."""
        _, height, width = pixels.shape
        crop = self.spec.crop
        new_width, new_height = self.spec.resized_size(width, height)
        left, top = self.spec.crop_origin(new_width, new_height)
        if (new_width, new_height) == (width, height):
            return pixels[:, top : top + crop, left : left + crop].contiguous()
        # Pillow's nearest samples pixel centres: torch's "nearest-exact", not its "nearest".
        nearest = self.spec.interpolation == "nearest"
        resized = F.interpolate(
            pixels.unsqueeze(0).float(),
            size=(new_height, new_width),
            mode="nearest-exact" if nearest else self.spec.interpolation,
            antialias=not nearest,
        )
        return resized[0, :, top : top + crop, left : left + crop].round().clamp(0, 255).to(torch.uint8)

    def _on_cpu(self, data: bytes) -> torch.Tensor | ServiceError:
        try:
            pixels = self.fallback(data)
        except ServiceError as error:
            return error
        return torch.from_numpy(pixels).to(self.device).permute(2, 0, 1).contiguous()


def _ycbcr_coded(image: Image.Image) -> bool:
    """Whether a 3-component JPEG holds YCbCr rather than RGB, by libjpeg's rule (JFIF, Adobe, ids)."""
    if "jfif" in image.info:
        return True
    if "adobe" in image.info:
        return image.info.get("adobe_transform") != 0
    return [component[0] for component in getattr(image, "layer", ())] != [ord("R"), ord("G"), ord("B")]


def _gpu_friendly(data: bytes, width: int, height: int, spec: Preprocessing) -> bool:
    """Whether the GPU path should take it: complete (ends at an end-of-image marker: nvjpeg decodes a
    truncated file without an error, libjpeg refuses it), and with a resize small enough to do whole."""
    new_width, new_height = spec.resized_size(width, height)
    return data.endswith(_END_OF_IMAGE) and new_width * new_height <= MAX_RESIZED_PIXELS
