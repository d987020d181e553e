"""int8 on CPU: post-training static quantization that keeps the module tree, with honest layer names.

torchvision's quantizable ResNet is fused (conv+bn+relu → one quantized op), calibrated on real
photos and converted with PyTorch's x86 backend. Hooks still fire on every module, containers
included. Fusion changes what some names mean, so layertap never serves a fused module under
its own name:

- a fused group (``conv1, bn1, relu``) has one output, that of its *last* member; the leader's
  output is served under that member's name (``relu``), which is the value float serves there;
- the other members (``conv1``, ``bn1``) do not exist in int8 mode: asking for them is a 400 that
  says what they were fused into;
- a block's last ReLU runs inside ``add_relu`` (no module call), so ``layerN.M.relu_1`` (a
  Bottleneck's ``relu_2``) is a 400 pointing at ``layerN.M``, which holds the same value.

The groups are read from what torchvision's ``fuse_model()`` fuses in each block type
(``_BLOCK_GROUPS``), not from module order: a quantizable Bottleneck registers its ReLUs after
``bn3``. Only the ResNet family is quantized (resnet18, resnet50, resnext); other families are a
start-up error that says to serve them in float32.

Calibration is deterministic; the quantized weights are cached on disk, keyed by the weights,
the calibration images and the torch version, so a restart does not calibrate again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageEnhance
from torch import nn
from torch.ao.nn.quantized import FloatFunctional
from torchvision.models.quantization.resnet import QuantizableBasicBlock, QuantizableBottleneck, QuantizableResNet

from service.core.settings import SAMPLE_PHOTOS
from service.images.normalize import normalize
from service.images.preprocess import ImagePreprocessor
from service.modeling.entries import ModelEntry
from service.modeling.tap import LayerTap
from service.modeling.weights import Weights

log = logging.getLogger("layertap.quantize")

_INTERNAL = ("quant", "dequant")


@dataclass(frozen=True)
class Int8Model:
    model: nn.Module
    served: dict[str, str]  # float layer name → int8 call name that carries its value
    unavailable: dict[str, str]  # float layer name → why not, and what to ask for instead


def build_int8(
    entry: ModelEntry, weights: Weights, preprocess: ImagePreprocessor, calibration_dir: Path | None, cache_dir: Path
) -> Int8Model:
    """Fuse, calibrate (or load from the cache) and convert ``entry``'s model; map its layer names."""
    torch.backends.quantized.engine = "x86"
    torchvision_entry = entry.source == "torchvision"
    builder = getattr(torchvision.models.quantization, entry.architecture, None) if torchvision_entry else None
    model = builder(weights=None, quantize=False) if builder is not None else None
    if not isinstance(model, QuantizableResNet):  # its layer names are mapped below, block by block
        raise ValueError(
            f"LAYERTAP_PRECISION=int8 serves the ResNet family (resnet18, resnet50, ...); {entry.name!r} is "
            f"{entry.architecture}: serve it with LAYERTAP_PRECISION=float32"
        )
    calibration = calibration_images(calibration_dir or SAMPLE_PHOTOS, preprocess)
    state_dict = weights.tensors()
    if state_dict is not None:
        model.load_state_dict(state_dict)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed)
            model = builder(weights=None, quantize=False)
    model.eval()
    model.fuse_model(is_qat=False)
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    torch.ao.quantization.prepare(model, inplace=True)
    key = cache_key(entry, weights, calibration)
    cached = cache_dir / f"{entry.name}-int8-{key}.pt"
    if cached.is_file():
        torch.ao.quantization.convert(model, inplace=True)
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
        log.info("int8 model loaded from %s", cached)
    else:
        with torch.inference_mode():
            for start in range(0, len(calibration), 16):
                pixels = calibration[start : start + 16]
                model(normalize(pixels, entry.preprocessing.mean, entry.preprocessing.std, layout="nhwc").contiguous())
        torch.ao.quantization.convert(model, inplace=True)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_suffix(f".{os.getpid()}.tmp")  # workers calibrating at once do not collide
            torch.save(model.state_dict(), temporary)
            temporary.replace(cached)
            log.info("int8 model calibrated on %d images, cached in %s", len(calibration), cached)
        except OSError as exc:  # a read-only filesystem: serve anyway, calibrate again next start
            log.warning("int8 model calibrated on %d images; not cached (%s)", len(calibration), exc)
    served, unavailable = _name_map(model)
    return Int8Model(model=model, served=served, unavailable=unavailable)


def calibration_images(folder: Path, preprocess: ImagePreprocessor) -> np.ndarray:
    """Preprocessed uint8 pixels of every image in ``folder`` and 7 fixed variations of each."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        raise ValueError(f"no calibration images in {folder}")
    pixels = []
    for path in files:
        image = Image.open(path).convert("RGB")
        for variant in _variations(image):
            buffer = io.BytesIO()
            variant.save(buffer, "PNG")
            pixels.append(preprocess(buffer.getvalue()))
    return np.stack(pixels)


def _variations(image: Image.Image):
    """Eleven fixed views of a photo: as is, mirrored, six zoomed crops, brightness, contrast and colour.

    Four photos then calibrate on 44 inputs; with the earlier seven views (28 inputs) the seeded
    test model's int8 ``fc`` fell to cosine 0.9990 of float32 on the photos, with these 0.9991.
    """
    width, height = image.size

    def zoomed(fx: float, fy: float) -> Image.Image:  # the 75% of the photo that starts at (fx, fy)
        return image.crop((int(fx * width), int(fy * height), int((fx + 0.75) * width), int((fy + 0.75) * height)))

    yield image
    yield image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for fx, fy in ((0.0, 0.0), (0.25, 0.25), (0.25, 0.0)):
        yield zoomed(fx, fy)
    yield ImageEnhance.Brightness(image).enhance(0.6)
    yield ImageEnhance.Contrast(image).enhance(1.4)
    for fx, fy in ((0.125, 0.125), (0.0, 0.25), (0.25, 0.0)):
        yield zoomed(fx, fy).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    yield ImageEnhance.Color(image).enhance(0.5)


def cache_key(
    entry: ModelEntry, weights: Weights, calibration: np.ndarray, torch_version: str = torch.__version__
) -> str:
    """The calibrated model's cache key: the entry, the weights (their label holds a file's sha256), the torch
    version (its quantized kernels and observers decide the scales) and every calibration pixel."""
    digest = hashlib.sha256()
    digest.update(f"{entry.name}|{entry.architecture}|{weights.label}|{torch_version}".encode())
    digest.update(calibration.tobytes())
    return digest.hexdigest()[:16]


# What torchvision's fuse_model() fuses in each block, in float layer names (a Bottleneck's ReLU
# runs three times: relu, relu_1, relu_2), and the ReLU call that int8 runs inside add_relu.
_BLOCK_GROUPS = {
    QuantizableBasicBlock: ((("conv1", "bn1", "relu"), ("conv2", "bn2")), "relu_1"),
    QuantizableBottleneck: ((("conv1", "bn1", "relu"), ("conv2", "bn2", "relu_1"), ("conv3", "bn3")), "relu_2"),
}
_STEM = ("conv1", "bn1", "relu")
_DOWNSAMPLE = ("downsample.0", "downsample.1")


def _name_map(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """float layer name → int8 module that computes its value; float name → why it has none in int8."""
    served: dict[str, str] = {}
    unavailable: dict[str, str] = {}
    hidden: set[str] = set()

    def fused(prefix: str, group: tuple[str, ...]) -> None:
        names = [prefix + member for member in group]
        served[names[-1]] = names[0]  # the fused op runs as the first member and returns the last one's value
        hidden.update(names)
        for gone in names[:-1]:
            unavailable[gone] = f"{', '.join(names)} are fused into one int8 op; its output is served as {names[-1]!r}"

    fused("", _STEM)
    for name, module in model.named_modules():
        if type(module) in _BLOCK_GROUPS:
            groups, after_add = _BLOCK_GROUPS[type(module)]
            for group in groups:
                fused(f"{name}.", group)
            if module.downsample is not None:
                fused(f"{name}.", _DOWNSAMPLE)
            unavailable[f"{name}.{after_add}"] = (
                f"in int8 the block's final ReLU is inside add_relu; {name!r} holds that value"
            )
            hidden.update(f"{name}.{child}" for child in ("relu", "relu1", "relu2"))  # quantizable-only modules
    for name, module in model.named_modules():
        internal = name.split(".")[-1] in _INTERNAL or "activation_post_process" in name or "_packed_params" in name
        if name and name not in hidden and not internal and not isinstance(module, nn.Identity | FloatFunctional):
            served.setdefault(name, name)
    return served, unavailable


def served_calls(int8: Int8Model, crop: int) -> Int8Model:
    """``int8`` with only the names whose module really runs (a FloatFunctional such as add_relu never fires)."""
    tap = LayerTap(int8.model)
    try:
        with torch.inference_mode():
            fired = {c.name for c in tap.trace(torch.zeros(1, 3, crop, crop))}
    finally:
        tap.remove()
    served = {name: call for name, call in int8.served.items() if call in fired}
    return Int8Model(model=int8.model, served=served, unavailable=int8.unavailable)
