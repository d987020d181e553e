"""Where the model's weights come from: the library's pretrained weights, a local file or folder, or a random init.

A model entry's own ``checkpoint`` wins (:func:`entry_weights`). Otherwise ``LAYERTAP_WEIGHTS``
takes ``pretrained`` (or its older name ``imagenet``: the entry's pretrained weights, from its
library's own cache: torchvision's weights enum member in the torch hub cache,
``$TORCH_HOME/hub/checkpoints``; timm's, transformers' and open_clip's in the Hugging Face hub
cache), a path to a state-dict file (``.pt`` and ``.pth``, read with ``weights_only=True``, or
``.safetensors``) or to a ``save_pretrained`` folder, or ``random``. Every failure becomes one
:class:`WeightsUnavailable` whose message names the alternatives, so a misconfigured service stops
at start with a sentence, not a traceback. torchvision's weights are checked here; the other
libraries resolve theirs when the model is built (service/modeling/sources/).

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
    "set LAYERTAP_WEIGHTS to 'pretrained' (needs the library's cache or a download), "
    "to the path of a state-dict file or save_pretrained folder, or to 'random' for offline development"
)
PRETRAINED = ("pretrained", "imagenet")  # the LAYERTAP_WEIGHTS values that mean the entry's own weights
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".json")  # what a folder's label is a digest of


@dataclass(frozen=True)
class HubAccess:
    """How the libraries that read the Hugging Face hub may do it: download or only read the cache,
    which cache (None: the library's default, ``HF_HUB_CACHE``), and whether a repository's own Python
    code may run (transformers' ``trust_remote_code``)."""

    allow_download: bool = True
    cache_dir: Path | None = None
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Weights:
    """Resolved weights: a label that identifies them exactly, and where the tensors come from.

    ``state_dict`` holds a file's tensors; ``member`` is torchvision's weights enum member for
    ``pretrained``, whose builder configures the network for it (GoogLeNet's and Inception v3's
    ``transform_input``, the ViT SWAG weights' ``image_size``, ...) and loads it from the torch
    cache (service/modeling/sources/torchvision_models.py); ``pretrained`` is another library's
    pretrained id, and ``folder`` a ``save_pretrained`` folder, both loaded by that library; none
    of them, for a seeded random init.
    """

    label: str
    state_dict: dict[str, torch.Tensor] | None = field(repr=False)
    seed: int = 0
    categories: tuple[str, ...] | None = None
    member: torchvision.models.WeightsEnum | None = None
    pretrained: str | None = None
    folder: Path | None = None
    hub: HubAccess = HubAccess()

    @property
    def random(self) -> bool:
        return self.state_dict is None and self.member is None and self.pretrained is None and self.folder is None

    def tensors(self) -> dict[str, torch.Tensor] | None:
        """The state dict: the file's, or the member's from the torch cache; None for random weights."""
        if self.state_dict is not None:
            return self.state_dict
        return self.member.get_state_dict(progress=False) if self.member is not None else None


def imagenet_cache_path(entry: ModelEntry) -> Path:
    """Where torch.hub keeps (or will keep) the entry's ImageNet checkpoint."""
    member = torchvision.models.get_weight(entry.weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name


def entry_weights(
    spec: str, entry: ModelEntry, *, allow_download: bool = True, seed: int = 0, hub: HubAccess | None = None
) -> Weights:
    """The weights an entry is served with: its own ``checkpoint`` when it names one, else ``spec``
    (``LAYERTAP_WEIGHTS``). So several models in one server can each have their own file."""
    hub = hub or HubAccess(allow_download=allow_download)
    if entry.checkpoint is not None:
        return _from_path(entry.checkpoint, hub)
    return resolve_weights(spec, entry, allow_download=allow_download, seed=seed, hub=hub)


def resolve_weights(
    spec: str, entry: ModelEntry, *, allow_download: bool = True, seed: int = 0, hub: HubAccess | None = None
) -> Weights:
    """Turn a ``LAYERTAP_WEIGHTS`` value into :class:`Weights`, raising WeightsUnavailable with a hint."""
    spec = spec.strip()
    hub = hub or HubAccess(allow_download=allow_download)
    if spec == "random":
        return Weights(label=f"random:seed={seed}", state_dict=None, seed=seed, hub=hub)
    if spec in PRETRAINED:
        if entry.source == "torchvision":
            return _imagenet(entry, allow_download)
        if not entry.weights:
            raise WeightsUnavailable(f"model entry {entry.name!r} names no pretrained weights; {ALTERNATIVES}")
        name = {"timm": f"{entry.architecture}.{entry.weights}", "open_clip": f"{entry.architecture}/{entry.weights}"}
        label = f"pretrained:{entry.source}:{name.get(entry.source, entry.weights)}"
        return Weights(label=label, state_dict=None, pretrained=entry.weights, hub=hub)
    return _from_path(Path(spec).expanduser(), hub)


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


def _from_path(path: Path, hub: HubAccess) -> Weights:
    """A state-dict file, or a ``save_pretrained`` folder (labelled by a digest of its weights and configs)."""
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_FILES):
            digest.update(str(file.relative_to(path)).encode())
            _digest_file(file, digest)
        return Weights(
            label=f"folder:{path.name}@sha256:{digest.hexdigest()[:12]}", state_dict=None, folder=path, hub=hub
        )
    weights = _from_file(path)
    return Weights(label=weights.label, state_dict=weights.state_dict, hub=hub)


def _digest_file(path: Path, digest) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def _from_file(path: Path) -> Weights:
    if not path.is_file():
        raise WeightsUnavailable(f"weights file or folder {path} does not exist; {ALTERNATIVES}")
    digest = hashlib.sha256()
    _digest_file(path, digest)
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
