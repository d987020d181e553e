"""Where the model's weights come from: torchvision's ImageNet weights, a local file, or a seeded random init.

A model entry's own ``checkpoint`` wins (:func:`entry_weights`). Otherwise ``LAYERTAP_WEIGHTS``
takes ``imagenet`` (the entry's torchvision weights enum member, fetched once into the torch hub
cache: ``$TORCH_HOME/hub/checkpoints``), a path to a state-dict file (``.pt`` and ``.pth``, read
with ``weights_only=True``, or ``.safetensors``), or ``random``. Every failure becomes one
:class:`WeightsUnavailable` whose message names the alternatives, so a misconfigured service stops
at start with a sentence, not a traceback.

The commands that use it (service/__main__.py), at container build time and before gunicorn forks
its workers::

    python -m service weights download   # put the ImageNet weights into the torch cache
    python -m service weights check      # load the configured weights into the model, check the device
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import safetensors.torch
import torch
import torchvision

from service.core.errors import WeightsUnavailable
from service.modeling.entries import ModelEntry

ALTERNATIVES = (
    "set LAYERTAP_WEIGHTS to 'imagenet' (needs the torch cache or a download), "
    "to the path of a state-dict file, or to 'random' for offline development"
)


@dataclass(frozen=True)
class Weights:
    """Resolved weights: a label that identifies them exactly, and where the tensors come from.

    ``state_dict`` holds a file's tensors; ``member`` is torchvision's weights enum member for
    ``imagenet``, whose builder configures the network for it (GoogLeNet's and Inception v3's
    ``transform_input``, the ViT SWAG weights' ``image_size``, ...) and loads it from the torch
    cache (service/modeling/build.py); neither, for a seeded random init.
    """

    label: str
    state_dict: dict[str, torch.Tensor] | None = field(repr=False)
    seed: int = 0
    categories: tuple[str, ...] | None = None
    member: torchvision.models.WeightsEnum | None = None

    def tensors(self) -> dict[str, torch.Tensor] | None:
        """The state dict: the file's, or the member's from the torch cache; None for random weights."""
        if self.state_dict is not None:
            return self.state_dict
        return self.member.get_state_dict(progress=False) if self.member is not None else None


def imagenet_cache_path(entry: ModelEntry) -> Path:
    """Where torch.hub keeps (or will keep) the entry's ImageNet checkpoint."""
    member = torchvision.models.get_weight(entry.weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name


def entry_weights(spec: str, entry: ModelEntry, *, allow_download: bool = True, seed: int = 0) -> Weights:
    """The weights an entry is served with: its own ``checkpoint`` when it names one, else ``spec``
    (``LAYERTAP_WEIGHTS``). So several models in one server can each have their own file."""
    if entry.checkpoint is not None:
        return _from_file(entry.checkpoint)
    return resolve_weights(spec, entry, allow_download=allow_download, seed=seed)


def resolve_weights(spec: str, entry: ModelEntry, *, allow_download: bool = True, seed: int = 0) -> Weights:
    """Turn a ``LAYERTAP_WEIGHTS`` value into :class:`Weights`, raising WeightsUnavailable with a hint."""
    spec = spec.strip()
    if spec == "random":
        return Weights(label=f"random:seed={seed}", state_dict=None, seed=seed)
    if spec == "imagenet":
        return _imagenet(entry, allow_download)
    return _from_file(Path(spec).expanduser())


def _imagenet(entry: ModelEntry, allow_download: bool) -> Weights:
    try:
        member = torchvision.models.get_weight(entry.weights)
    except (ValueError, KeyError) as exc:
        raise WeightsUnavailable(f"model entry {entry.name!r} names unknown weights {entry.weights!r}: {exc}") from None
    cached = imagenet_cache_path(entry)
    if not cached.is_file():
        if not allow_download:
            raise WeightsUnavailable(
                f"ImageNet weights {member} are not in the torch cache ({cached}) and LAYERTAP_ALLOW_DOWNLOAD is "
                f"off; run `python -m service weights download` where there is network, or {ALTERNATIVES}"
            )
        try:
            member.get_state_dict(progress=False, check_hash=True)  # into the cache; the builder reads it there
        except Exception as exc:  # noqa: BLE001 - urllib, hash and unpickling errors all mean "unavailable"
            raise WeightsUnavailable(
                f"cannot load ImageNet weights {member} from {member.url} into {cached}: {exc}; {ALTERNATIVES}"
            ) from None
    categories = tuple(member.meta.get("categories") or ()) or None
    return Weights(label=f"imagenet:{member}", state_dict=None, categories=categories, member=member)


def _from_file(path: Path) -> Weights:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist; {ALTERNATIVES}")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    try:
        if path.suffix == ".safetensors":
            loaded = safetensors.torch.load_file(path, device="cpu")
        else:  # pickled: tensors and plain containers only, never arbitrary objects
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not usable
        raise WeightsUnavailable(f"weights file {path} is not a loadable state dict ({exc}); {ALTERNATIVES}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsUnavailable(f"weights file {path} does not hold a state dict of tensors; {ALTERNATIVES}")
    return Weights(label=f"file:{path.name}@sha256:{digest.hexdigest()[:12]}", state_dict=loaded)
