"""Typed settings: every knob of the service, read from ``LAYERTAP_*`` environment variables.

This is the single place where a setting is declared. Each field has a type, a default and a
one-line description; the configuration table in ``docs/configuration.md`` is generated from (and
tested against) this class, so the two cannot drift apart: ``python -m service settings --write-docs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.hardware import cuda_expected, default_sizing, torch_threads_per_worker

# The device-aware sizes (service/core/hardware.py) are the defaults here too: one place holds the numbers.
_CPU_SIZING = default_sizing(cuda=False, cores=2)  # as documented; the real workers follow the cores
_CUDA_SIZING = default_sizing(cuda=True, cores=1)  # its workers depend on the cores; the rest does not


def _bundled(folder: str) -> Path:
    """A folder that ships with the server: inside the package once installed (the wheel maps the
    repository's ``models/`` to ``service/models/``, see pyproject.toml), beside it in a checkout."""
    package = Path(__file__).resolve().parents[1]  # service/, two levels above service/core/settings.py
    installed = package / folder
    return installed if installed.is_dir() else package.parent / folder


DEFAULT_MODEL_REPOSITORY = _bundled("models")
# The sample photos (models/photos/README.md): the int8 calibration set, and what tests, bench and stress send.
SAMPLE_PHOTOS = DEFAULT_MODEL_REPOSITORY / "photos"


# The values of LAYERTAP_PREPROCESSING, which service/images/preprocess.py accepts too.
PreprocessingMode = Literal["fast", "exact"]
PREPROCESSING_MODES: tuple[str, ...] = get_args(PreprocessingMode)

# Variables of earlier releases: silently ignoring one would change behaviour without a word.
RENAMED_VARIABLES = {
    "LAYERTAP_JPEG_DRAFT": "LAYERTAP_PREPROCESSING=fast (true) or exact (false)",
    "LAYERTAP_MODEL": "LAYERTAP_MODELS (a comma-separated list; one name serves one model)",
}


class Settings(BaseSettings):
    """Service configuration. Construct with keyword arguments in tests, from the environment in production."""

    model_config = SettingsConfigDict(env_prefix="LAYERTAP_", extra="forbid", frozen=True)

    host: str = Field("0.0.0.0", description="Address gunicorn binds to.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port gunicorn binds to.")
    models: str = Field(
        "resnet18",
        description="Model entries to serve, comma-separated (`models/<name>.toml`); the first is the default.",
    )
    model_repository: Path = Field(DEFAULT_MODEL_REPOSITORY, description="Folder holding the model entries.")
    weights: str = Field(
        "imagenet",
        description="`pretrained` or its older name `imagenet` (each entry's own pretrained weights, from its "
        "library's cache), `random`, or one model's state-dict file or save_pretrained folder.",
    )
    allow_download: bool = Field(
        True,
        description="Whether pretrained weights missing from the torch or Hugging Face cache may be downloaded "
        "at start.",
    )
    hub_cache: Path | None = Field(
        None,
        description="The Hugging Face hub cache that timm, transformers and open_clip entries read; "
        "default: the library's own (`HF_HUB_CACHE`, `~/.cache/huggingface/hub`).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Let a transformers entry run the Python code its repository or folder ships "
        "(`trust_remote_code`): arbitrary code, run with the service's rights. Off: such entries fail at start.",
    )
    seed: int = Field(0, description="Seed for `random` weights, so that random models are reproducible.")
    device: str = Field("auto", description="`auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Compute dtype; `auto`: bfloat16 on CUDA and on CPUs with AMX or AVX-512 BF16, "
        "else float32. Outputs are float32.",
    )
    precision: Literal["float32", "int8"] = Field(
        "float32", description="`int8`: post-training static quantization on CPU (see docs/hardware.md, int8 on CPU)."
    )
    calibration_dir: Path | None = Field(
        None, description="Folder of images to calibrate int8 on; default: the sample photos in `models/photos/`."
    )
    int8_cache_dir: Path = Field(
        Path.home() / ".cache" / "layertap",
        description="Where calibrated int8 models are cached (keyed by weights, calibration and torch).",
    )
    channels_last: bool = Field(
        True, description="Run convolutions in the channels_last memory format (faster on CPU and GPU)."
    )
    preprocessing: PreprocessingMode = Field(
        "fast",
        description="`fast`: JPEG draft decoding, torch's uint8 resize (needs AVX2); `exact`: torchvision's pipeline.",
    )
    jpeg_decoder: Literal["auto", "pillow", "device"] = Field(
        "auto",
        description="Where JPEGs are decoded: `device` in batches on the model's device (nvjpeg; on a CPU "
        "only slower), `pillow` in request threads; `auto`: device on CUDA with `fast` preprocessing.",
    )
    fold_batch_norm: bool = Field(
        True,
        description="Serve requests that need no conv/BN output from a copy with BN folded into convs (~20% faster).",
    )
    max_body_bytes: int = Field(20 * 1024 * 1024, gt=0, description="Largest request body accepted; larger gets 413.")
    max_pixels: int = Field(
        40_000_000,
        gt=0,
        description="Largest image (width × height) decoded; larger gets 413 before any pixel is decoded.",
    )
    max_images_per_request: int = Field(32, gt=0, description="Most images in one request; more gets 413.")
    max_output_values: int = Field(
        64_000_000,
        gt=0,
        description="Most values one answer may hold (images × elements of every layer asked for, pooled or not; a "
        "JSON number counts 3); more gets 413 before the upload. The default passes every layer of any shipped "
        "model for one image in base64.",
    )
    max_decoded_bytes: int = Field(
        160_000_000,
        gt=0,
        description="Largest image once decoded, in bytes (width × height × 1 to 4 by its mode); larger gets 413 "
        "before any pixel is decoded.",
    )
    max_aspect_ratio: float = Field(
        1000.0, ge=1, description="Longest side ÷ shortest side an image may have; beyond it, 400."
    )
    max_batch_size: int = Field(
        _CPU_SIZING.max_batch_size,
        gt=0,
        description=f"Most images in one forward pass of the batcher (default {_CUDA_SIZING.max_batch_size} on CUDA).",
    )
    max_batch_delay_ms: float = Field(
        2.0, ge=0, description="How long the batcher waits for more work before running a partial batch."
    )
    max_queue_images: int = Field(
        _CPU_SIZING.max_queue_images,
        gt=0,
        description="Images admitted (decoding or queued) before new work waits, then gets 429 "
        f"(default {_CUDA_SIZING.max_queue_images} on CUDA).",
    )
    max_queue_wait_ms: float = Field(
        1000.0,
        ge=0,
        description="How long a request waits for room in a full queue before its 429 (keeps goodput under overload).",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Deadline of a request inside the service; past it, 503 (408 while its body is still arriving).",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time a client has to send a request's headers; past it, 408 and the socket closes."
    )
    body_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for the next bytes of a request body; past it, 408, and its queue room is freed.",
    )
    max_explain_batch: int = Field(
        8,
        gt=0,
        description="Most images in one /explain pass (its gradients take several times a forward pass's memory).",
    )
    max_explain_steps: int = Field(
        256, gt=0, description="Most integrated-gradients steps one /explain request may ask for; more gets 400."
    )
    max_explain_passes: int = Field(
        2048,
        gt=0,
        description="Most forward and backward passes one /explain request may cost: images × (1 for a CAM "
        "method, steps + 1 for integrated gradients); more gets 413. The request holds queue room by that cost.",
    )
    workers: int = Field(
        _CPU_SIZING.workers,
        gt=0,
        description="gunicorn worker processes, each with its own model (default on the CPU: 2, or 1 on a single core; "
        "on CUDA: cores ÷ 2, at most 8).",
    )
    threads: int = Field(
        _CPU_SIZING.threads,
        gt=0,
        description="gunicorn threads per worker: requests handled at once (decoding, queued or waiting; "
        f"{_CUDA_SIZING.threads} on CUDA).",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per worker; 0 means CPU cores ÷ workers.")
    share_idle_cores: bool = Field(
        True,
        description="On the CPU with `torch_threads` 0: a worker that alone has work runs its passes on every core, "
        "not only on its share (a lone client's latency); off: always its share.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of the service.")
    log_format: Literal["json", "text"] = Field("json", description="One JSON object per log line, or plain text.")
    api_key: SecretStr | None = Field(
        None, description="When set, requests need `Authorization: Bearer <key>` (health, ready, metrics excepted)."
    )
    auth_all_endpoints: bool = Field(False, description="Require the API key on health, ready and metrics too.")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed_variables(cls, data):
        present = {name.upper() for name in os.environ}  # pydantic-settings reads names in any case
        for old, new in RENAMED_VARIABLES.items():
            if old in present:
                raise ValueError(f"{old} was renamed: use {new}")
        return data

    @model_validator(mode="before")
    @classmethod
    def _device_aware_defaults(cls, data):
        """Sizes a user did not set follow the device (service/core/hardware.py has the rules)."""
        if isinstance(data, dict):
            sizing = default_sizing(cuda_expected(str(data.get("device", "auto")).strip().lower()))
            for name in ("workers", "threads", "max_batch_size", "max_queue_images"):
                data.setdefault(name, getattr(sizing, name))
        return data

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",")]
        if not all(names) or len(set(names)) != len(names):
            raise ValueError(f"models must be distinct entry names separated by commas, not {value!r}")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_queue_images < self.max_batch_size:
            raise ValueError(
                f"max_queue_images ({self.max_queue_images}) must be at least max_batch_size "
                f"({self.max_batch_size}), or batches could never fill"
            )
        if self.max_queue_images < self.max_images_per_request:
            raise ValueError(
                f"max_queue_images ({self.max_queue_images}) must be at least max_images_per_request "
                f"({self.max_images_per_request}), or a full request could never be admitted"
            )
        return self

    @property
    def model_names(self) -> tuple[str, ...]:
        """The served models, in order; the first answers requests that name none."""
        return tuple(name.strip() for name in self.models.split(",") if name.strip())

    def effective_torch_threads(self, cores: int | None = None) -> int:
        """Intra-op threads for one worker: all workers together should not oversubscribe the ``cores``
        (default: those this process may use)."""
        if self.torch_threads:
            return self.torch_threads
        return torch_threads_per_worker(self.workers, cores)


def settings_table() -> str:
    """The configuration table (docs/configuration.md), generated from the fields above."""
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if name == "model_repository":
            default = "models/ (beside service/)"
        elif name == "int8_cache_dir":
            default = "~/.cache/layertap"
        annotation = _type_label(field.annotation)
        rows.append(f"| `LAYERTAP_{name.upper()}` | {annotation} | `{default}` | {field.description} |")
    return "\n".join(rows)


def _type_label(annotation) -> str:
    """int, Path, `a \\| b` for a Literal, `secret` for a SecretStr."""
    if getattr(annotation, "__origin__", None) is Literal:
        return " \\| ".join(str(choice) for choice in annotation.__args__)
    if SecretStr in getattr(annotation, "__args__", ()):
        return "secret"
    if Path in getattr(annotation, "__args__", ()):
        return "Path"
    return annotation.__name__


TABLE_MARKERS = ("<!-- settings-table:start -->", "<!-- settings-table:end -->")
# In a checkout: the page the table lives in (an installed wheel has no docs/).
DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write_docs_table(page: Path = DOCS_PAGE) -> None:
    """Replace the table between the page's markers with :func:`settings_table`; ValueError in an installed
    package, which has no docs/ to write to."""
    if not page.is_file():
        raise ValueError(f"{page} does not exist: the docs are written from a checkout of the repository")
    text = page.read_text()
    start, end = TABLE_MARKERS
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{settings_table()}\n{end}{tail}")
