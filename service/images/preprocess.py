"""Image bytes → the model's input pixels, safely: bounded memory, any common format, EXIF applied.

Two modes. ``exact`` equals torchvision's reference pipeline for the weights
(``weights.transforms()`` applied to ``Image.open(...).convert("RGB")``) bit for bit, up to the
final float conversion, which the runner does on the whole batch; the deliberate differences are
EXIF orientation (applied), 16-bit grayscale (scaled, not clipped) and very elongated images
(resampled from the crop's source box, at most one level off). ``fast`` (the service's
default) takes two measured shortcuts:

- large JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg, never below the resize target:
  several times faster on camera photos;
- the antialiased resize runs on torch's uint8 AVX2 kernel (the one torchvision itself uses on
  tensors): 0.27 ms instead of Pillow's 1.14 ms for 640×427 → 383×256, within one level of it
  on < 1% of pixels. Pillow still resizes where the CPU has no AVX2, for ``nearest``, and for
  sources over 4 Mpx (see _TORCH_RESIZE_MAX_PIXELS). ``resize_kernel`` chooses otherwise, and
  :meth:`ImagePreprocessor.resize_path` says which way an image of a given size is resized.

Together they stay within cosine 0.9995 of ``exact`` on pooled features (tests/images/test_fast_preprocessing.py).
Either way the result is the resized, center-cropped ``uint8`` pixels (height × width × RGB),
so request threads hand the model thread a quarter of the bytes of float32.

Defences, in order: a whitelist of decoders (no Ghostscript-backed EPS and friends); the
pixel limit and the decoded-bytes limit checked from the header, before a single pixel is
decoded (Pillow itself only warns below 179 megapixels; a 250 KB float TIFF of 6300×6300 is
159 MB once decoded); a progressive JPEG's scans counted before decoding (each is a pass over
the whole image: thousands make a CPU bomb of a small file); truncated data is an error, not
grey padding; grayscale images (8-bit, 16-bit, float) stay one channel until after the resize,
with no full-size float or RGB copy; resizing reads only the source region that survives the
center crop, so a 1×100000 strip costs what a square does instead of a 256×25,600,000
intermediate.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.core.errors import ImageTooLarge, InvalidImage
from service.core.settings import PREPROCESSING_MODES
from service.images.recipe import Preprocessing

# Decoders layertap accepts (Pillow's JPEG decoder also opens the MPO files of phone cameras).
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# Above this, resizing the whole image before the crop would waste memory (see _resize_and_crop).
_MAX_INTERMEDIATE_PIXELS = 1 << 20
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What Pillow stores per pixel of a decoded image in each mode (4 bytes for the rest: RGB is stored as RGBX).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# A JPEG scan marker (SOS) cannot occur inside entropy-coded data (0xFF is stuffed there as 0xFF00),
# so counting it counts the scans. libjpeg writes at most ~10 for a progressive photo; libjpeg-turbo's
# own TurboJPEG API refuses more than 500 when told to limit them.
JPEG_SCAN_MARKER = b"\xff\xda"
MAX_JPEG_SCANS = 100
# torch's uint8 antialiased resize is a single-threaded AVX2 kernel. Elsewhere torch falls back
# to a generic kernel that would start an OpenMP team in every request thread: Pillow then.
_TORCH_KERNEL_CAPABILITIES = ("AVX2", "AVX512")
RESIZE_KERNELS = ("torch", "pillow")
# The torch path copies the decoded image into numpy (3 bytes a pixel); above this (a large PNG or
# TIFF: JPEGs are drafted down first) Pillow resizes in place instead, to keep memory flat.
_TORCH_RESIZE_MAX_PIXELS = 4_000_000

Image.init()  # register every plugin, so that `formats=` can name them all

# A truncated file must be refused, never silently completed with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow warns about what users upload (bomb-sized headers, odd EXIF, malformed MPO); this module
# turns what matters into errors, and the rest is no concern of the operator's logs. A filter
# installed once, because warnings.catch_warnings() in request threads races on the global list.
warnings.filterwarnings("ignore", module=r"PIL\.")
# The resize below reads a read-only numpy view of Pillow's pixels, which torch never writes.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


def default_resize_kernel(
    mode: str, interpolation: str, cpu_capability: str | None = None, resampler: str = "pillow"
) -> str:
    """The resize a preprocessor uses on ordinary images unless told otherwise. In exact mode, the one the
    library's own transform uses (``resampler``). In fast mode, ``torch`` where the CPU has torch's uint8 kernel
    (``cpu_capability``: torch's name for it, default this CPU's), else ``pillow``. Nearest has no antialiased
    torch kernel, and its pixel-centre rule differs from Pillow's."""
    if mode == "exact":
        return resampler
    capability = torch.backends.cpu.get_cpu_capability() if cpu_capability is None else cpu_capability
    fast = mode == "fast" and capability in _TORCH_KERNEL_CAPABILITIES and interpolation != "nearest"
    return "torch" if fast else "pillow"


class ImagePreprocessor:
    """Callable: encoded image bytes → ``(crop, crop, 3)`` uint8 array, or a 4xx :class:`ServiceError`.

    ``resize_kernel`` (``torch`` or ``pillow``; None: :func:`default_resize_kernel`) resizes ordinary
    images; ``torch`` needs ``fast`` mode and an interpolation other than nearest.
    """

    def __init__(
        self,
        spec: Preprocessing,
        max_pixels: int,
        mode: str = "exact",
        max_aspect_ratio: float = 1000,
        resize_kernel: str | None = None,
        max_decoded_bytes: int | None = None,
    ):
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"mode must be one of {PREPROCESSING_MODES}, not {mode!r}: 'exact' is bit-exact with torchvision"
            )
        resize_kernel = resize_kernel or default_resize_kernel(mode, spec.interpolation, resampler=spec.resampler)
        if resize_kernel not in RESIZE_KERNELS:
            raise ValueError(f"resize_kernel must be one of {', '.join(RESIZE_KERNELS)}, not {resize_kernel!r}")
        exact_torch = mode == "exact" and spec.resampler == "torch"
        if resize_kernel == "torch" and ((mode != "fast" and not exact_torch) or spec.interpolation == "nearest"):
            raise ValueError(
                "the torch resize kernel is for fast mode (or exact mode where the library resizes with torch), "
                "and an interpolation other than nearest"
            )
        self.spec = spec
        self.max_pixels = max_pixels
        self.max_decoded_bytes = max_decoded_bytes if max_decoded_bytes is not None else 4 * max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.mode = mode
        self.resize_kernel = resize_kernel
        self._resample = _RESAMPLING[spec.interpolation]

    def __call__(self, data: bytes) -> np.ndarray:
        return _as_rgb(self._resize_and_crop(_to_8bit(self.decode(data))))

    def decode(self, data: bytes) -> Image.Image:
        """``data`` decoded, upright (EXIF orientation applied), in its own mode: what gets resized. In fast mode
        a large JPEG comes out at 1/2, 1/4 or 1/8 of its size, never below the resize target."""
        image = self.open_header(data)
        if self.mode == "fast" and image.format in ("JPEG", "MPO"):
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below the resize target:
            # a 12 Mpx photo decodes ~6× faster, and resizing then starts from far fewer pixels.
            image.draft(None, self.spec.resized_size(*image.size))
        self._check_decoded_bytes(image)
        return self._decode(image)

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Decoded RGB ``(height, width, 3)`` uint8 → the crop, under the same limits and the same resize as uploads."""
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise InvalidImage(f"pixels must be uint8 (height, width, 3) RGB, not {pixels.dtype} {list(pixels.shape)}")
        height, width = pixels.shape[:2]
        self._check_size(width, height)
        return self._resize_and_crop(Image.fromarray(np.ascontiguousarray(pixels), "RGB"))

    def open_header(self, data: bytes) -> Image.Image:
        """Open ``data`` from its header only, enforcing every limit; no pixel is decoded yet."""
        if not data:
            raise InvalidImage("the image is empty (0 bytes)")
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"image refused before decoding: {exc}") from None
        except UnidentifiedImageError:
            raise InvalidImage(
                f"cannot identify the image format; supported formats are {', '.join(FORMATS)}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on malformed headers
            raise InvalidImage(f"cannot read the image header: {exc}") from None
        self._check_size(*image.size)
        if image.format in ("JPEG", "MPO") and data.count(JPEG_SCAN_MARKER) > MAX_JPEG_SCANS:
            raise InvalidImage(
                f"the JPEG has {data.count(JPEG_SCAN_MARKER):,} scans, over the {MAX_JPEG_SCANS} a progressive JPEG "
                "may have here; re-encode it"
            )
        return image

    def decoded_bytes(self, data: bytes) -> int:
        """What decoding ``data`` will allocate (its size as drafted, by its mode), from the header alone; 0 for
        data that will not decode (its error comes when it is prepared)."""
        try:
            image = self.open_header(data)
        except (ImageTooLarge, InvalidImage):
            return 0
        if self.mode == "fast" and image.format in ("JPEG", "MPO"):
            image.draft(None, self.spec.resized_size(*image.size))  # only sets the scale: nothing is decoded yet
        return _decoded_size(image)

    def _check_decoded_bytes(self, image: Image.Image) -> None:
        """The decoded-bytes limit, from the (drafted) size and the mode: what Pillow will allocate."""
        width, height = image.size
        decoded = _decoded_size(image)
        if decoded > self.max_decoded_bytes:
            raise ImageTooLarge(
                f"image is {width}×{height} in mode {image.mode}: {decoded:,} bytes once decoded, over the limit "
                f"of {self.max_decoded_bytes:,} (LAYERTAP_MAX_DECODED_BYTES); downscale it or send 8-bit RGB"
            )

    def _check_size(self, width: int, height: int) -> None:
        """The pixel limit and the aspect-ratio limit, from the dimensions alone."""
        if width <= 0 or height <= 0:
            raise InvalidImage(f"image has no pixels ({width}×{height})")
        if width * height > self.max_pixels:
            raise ImageTooLarge(
                f"image is {width}×{height} = {width * height:,} pixels, over the limit of "
                f"{self.max_pixels:,} (LAYERTAP_MAX_PIXELS); downscale it before sending"
            )
        if max(width, height) / min(width, height) > self.max_aspect_ratio:
            raise InvalidImage(
                f"image is {width}×{height}, an aspect ratio over {self.max_aspect_ratio:g}:1 "
                "(LAYERTAP_MAX_ASPECT_RATIO); crop it to the region of interest first"
            )

    def _decode(self, image: Image.Image) -> Image.Image:
        try:
            image.load()  # first frame of animated GIF/WebP/TIFF
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data, whatever the decoder says
            raise InvalidImage(f"the image data is truncated or corrupt: {exc}") from None
        try:
            return ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the user the image
            return image

    def resize_path(self, width: int, height: int) -> str:
        """How a decoded ``width``×``height`` image becomes the crop: ``box`` (only the cropped region resampled,
        by Pillow: a very elongated image), ``crop`` (already the resize target), ``torch`` or ``pillow``."""
        new_width, new_height = self.spec.resized_size(width, height)
        if new_width * new_height > _MAX_INTERMEDIATE_PIXELS:
            return "box"
        if (new_width, new_height) == (width, height):  # e.g. a JPEG drafted to exactly the target
            return "crop"
        # In exact mode torch resizes every size: it is what the library does (transformers' processors).
        if self.resize_kernel == "torch" and (self.mode == "exact" or width * height <= _TORCH_RESIZE_MAX_PIXELS):
            return "torch"
        return "pillow"

    def _resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """torchvision's ``resize(shorter side)`` (or both sides, ``squash``) then ``center_crop``.

        For ordinary shapes this is literally resize then crop, bit-exact with torchvision in
        ``exact`` mode. For very elongated images the full resize would be huge (a 1×100000
        strip becomes 256×25,600,000), so only the source region that maps onto the crop is
        resampled; PIL's ``box`` still lets the filter read the pixels around it, so the result
        is the same crop up to float rounding (at most one level on a handful of pixels).
        """
        width, height = image.size
        crop = self.spec.crop
        new_width, new_height = self.spec.resized_size(width, height)
        left, top = self.spec.crop_origin(new_width, new_height)
        path = self.resize_path(width, height)
        if path == "box":
            scale_x, scale_y = width / new_width, height / new_height
            box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
            return np.asarray(image.resize((crop, crop), self._resample, box=box))
        if path == "crop":
            return np.asarray(image.crop((left, top, left + crop, top + crop)))
        if path == "pillow":
            resized = image.resize((new_width, new_height), self._resample)
            return np.asarray(resized.crop((left, top, left + crop, top + crop)))
        # HWC memory viewed as NCHW is channels_last, the layout the uint8 kernel reads directly.
        pixels = np.asarray(image)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels  # grayscale: one channel
        source = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        resized = F.interpolate(source, size=(new_height, new_width), mode=self.spec.interpolation, antialias=True)
        # numpy, not torch, makes the HWC copy: a torch copy this large may start an OpenMP team.
        return np.ascontiguousarray(resized[0, :, top : top + crop, left : left + crop].numpy().transpose(1, 2, 0))


def _decoded_size(image: Image.Image) -> int:
    """The bytes Pillow allocates to decode ``image`` at its (drafted) size, by its mode."""
    width, height = image.size
    return width * height * _BYTES_PER_PIXEL.get(image.mode, 4)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any mode → RGB, or L for grayscale (made RGB after the resize, by :func:`_as_rgb`: resampling each
    channel alike, that is the same pixels, without a full-size RGB copy). 16-bit grayscale is scaled to 8 bits
    (Pillow's convert would clip it); float is clipped to 0–255, by Pillow, with no float copy."""
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image)
        if pixels.dtype != np.uint16:  # mode "I" is int32: clip into 16 bits first
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
        eight_bit = np.empty(pixels.shape, np.uint8)
        np.right_shift(pixels, 8, out=eight_bit, casting="unsafe")  # straight into 8 bits: no 16-bit temporary
        return Image.fromarray(eight_bit, "L")
    if image.mode in ("F", "L"):
        return image.convert("L") if image.mode == "F" else image
    return image if image.mode == "RGB" else image.convert("RGB")


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """The crop as (height, width, 3): a grayscale crop's one channel repeated."""
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    return np.ascontiguousarray(np.repeat(pixels.reshape(*pixels.shape[:2], 1), 3, axis=2))
