"""How timm, transformers and open_clip entries load: checkpoints of their own, caches, and the refusals.

A newcomer's entries (a checkpoint path, no preprocessing) start and answer what the library
computes; offline and uncached, the error names the cache and the command that fills it; an
uninstalled library names its ``pip install`` line; a repository's own code is refused unless
``LAYERTAP_TRUST_REMOTE_CODE`` allows it; unknown names get close matches.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from service.core.errors import StartupError, WeightsUnavailable
from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.dataplane.plane import DataPlane
from service.modeling.build import build_network
from service.modeling.entries import load_entry
from service.modeling.sources import source_module
from service.modeling.weights import HubAccess, entry_weights, resolve_weights
from tests.checkpoints import perturbed, transformers_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def serve(repository, name: str, **settings) -> DataPlane:
    plane = DataPlane.from_settings(
        Settings(
            models=name, model_repository=repository, device="cpu", dtype="float32", preprocessing="exact", **settings
        )
    )
    plane.start()
    assert plane.wait_ready(300), plane.failure
    return plane


def embedding_of(plane: DataPlane, data: bytes) -> np.ndarray:
    return plane.extract([data]).features["embedding"]


def close(got: np.ndarray, expected: torch.Tensor) -> None:
    expected = expected.detach().numpy()
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4 * float(np.abs(expected).max())


def photo_input(transform, data: bytes) -> torch.Tensor:
    return transform(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)


# ---- a newcomer's entries: a checkpoint path and no preprocessing ------------------------------
def test_a_timm_entry_with_a_safetensors_checkpoint(tmp_path, photos):
    import timm
    import timm.data

    model = timm.create_model("resnet18.a1_in1k", pretrained=False).eval()
    model.load_state_dict(perturbed(model))
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "mine.safetensors"
    )
    (tmp_path / "mine.toml").write_text(
        'source = "timm"\narchitecture = "resnet18"\nweights = "a1_in1k"\ncheckpoint = "mine.safetensors"\n'
    )
    plane = serve(tmp_path, "mine", weights="random")  # the entry's checkpoint wins
    try:
        runner = plane.runner(None)
        assert runner.weights.label.startswith("file:mine.safetensors@sha256:")
        transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        x = photo_input(transform, photos["rocket.jpg"])
        with torch.no_grad():
            close(
                embedding_of(plane, photos["rocket.jpg"]),
                model.forward_head(model.forward_features(x), pre_logits=True),
            )
            close(
                plane.extract([photos["rocket.jpg"]], ("layer4",)).features["layer4"],
                model.layer4(
                    model.layer3(model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(x)))))))
                ),
            )
        assert runner.entry.preprocessing.resize == 235 and runner.entry.preprocessing.crop == 224  # crop_pct 0.95
    finally:
        plane.close()


def test_a_transformers_entry_with_a_save_pretrained_folder(tmp_path, photos):
    model, processor = transformers_model("facebook/dinov2-small")
    model.load_state_dict(perturbed(model, seed=3))
    model.save_pretrained(tmp_path / "dinov2")
    processor.save_pretrained(tmp_path / "dinov2")
    (tmp_path / "mine.toml").write_text(
        'source = "transformers"\narchitecture = "facebook/dinov2-small"\ncheckpoint = "dinov2"\n'
    )
    plane = serve(tmp_path, "mine", weights="random", allow_download=False)  # nothing read from the hub
    try:
        assert plane.runner(None).weights.label.startswith("folder:dinov2@sha256:")
        x = processor(images=Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            close(embedding_of(plane, photos["chelsea.png"]), model(**x).pooler_output)
    finally:
        plane.close()


def test_an_open_clip_entry_with_a_pickled_checkpoint(tmp_path, photos):
    import open_clip

    model = open_clip.create_model("ViT-B-32").eval()
    model.load_state_dict(perturbed(model, seed=4))
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    (tmp_path / "mine.toml").write_text(
        'source = "open_clip"\narchitecture = "ViT-B-32"\nweights = "laion2b_s34b_b79k"\ncheckpoint = "clip.pt"\n'
    )
    plane = serve(tmp_path, "mine", weights="random")
    try:
        tag = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
        transform = open_clip.image_transform(224, is_train=False, mean=tag["mean"], std=tag["std"])
        with torch.no_grad():
            close(
                embedding_of(plane, photos["grace_hopper.jpg"]),
                model.encode_image(photo_input(transform, photos["grace_hopper.jpg"])),
            )
    finally:
        plane.close()


def test_a_checkpoint_that_does_not_fit_a_timm_model_names_its_keys(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pt")
    (tmp_path / "wrong.toml").write_text('source = "timm"\narchitecture = "resnet34"\ncheckpoint = "resnet18.pt"\n')
    entry = load_entry(tmp_path, "wrong")
    with pytest.raises(WeightsUnavailable, match=r"do not fit resnet34: \d+ missing keys \(layer1.2.conv1.weight"):
        build_network(entry, entry_weights("random", entry))


# ---- caches and downloads ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["convnextv2_tiny", "dinov2_small", "clip_vit_b32"])
def test_offline_and_uncached_names_the_cache_and_the_command(tmp_path, name):
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, name)
    hub = HubAccess(allow_download=False, cache_dir=tmp_path / "empty")
    weights = resolve_weights("pretrained", entry, hub=hub)
    with pytest.raises(WeightsUnavailable) as caught:
        build_network(entry, weights)
    message = str(caught.value)
    assert f"not in the Hugging Face cache ({tmp_path / 'empty'})" in message
    assert "python -m service weights download" in message and "LAYERTAP_ALLOW_DOWNLOAD is off" in message


def test_a_library_that_is_not_installed_names_the_pip_line():
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "clip_vit_b32")
    assert source_module(entry).__name__.endswith("open_clip_models")  # installed here: the module itself
    with pytest.raises(StartupError, match=r"pip install 'layertap\[open_clip\]' \(or pip install open_clip_torch\)"):
        source_module(entry, is_installed=lambda package: package != "open_clip")


# ---- refusals and hints --------------------------------------------------------------------------
def test_code_shipped_with_a_model_runs_only_when_trusted(tmp_path):
    """A folder whose config maps its class to its own Python file: refused by default; run when trusted."""
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "layertap-test", "architectures": ["TinyVision"], "hidden": 8,
        "auto_map": {"AutoConfig": "modeling_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyVision"},
    }))  # fmt: skip
    (folder / "modeling_tiny.py").write_text(
        "import torch\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "from transformers.modeling_outputs import BaseModelOutputWithPooling\n"
        "class TinyConfig(PretrainedConfig):\n"
        "    model_type = 'layertap-test'\n"
        "    def __init__(self, hidden=8, **kwargs):\n"
        "        self.hidden = hidden\n"
        "        super().__init__(**kwargs)\n"
        "class TinyVision(PreTrainedModel):\n"
        "    config_class = TinyConfig\n"
        "    def __init__(self, config):\n"
        "        super().__init__(config)\n"
        "        self.conv = torch.nn.Conv2d(3, config.hidden, 4, stride=4)\n"
        "        self.post_init()\n"
        "    def forward(self, pixel_values):\n"
        "        maps = self.conv(pixel_values)\n"
        "        pooled = maps.mean((2, 3))\n"
        "        return BaseModelOutputWithPooling(last_hidden_state=maps, pooler_output=pooled)\n"
    )
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "resample": 2,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
    }))  # fmt: skip
    (tmp_path / "custom.toml").write_text(f'source = "transformers"\narchitecture = "{folder}"\n')
    entry = load_entry(tmp_path, "custom")
    with pytest.raises(StartupError, match="LAYERTAP_TRUST_REMOTE_CODE=true"):
        build_network(entry, resolve_weights("random", entry, hub=HubAccess(allow_download=False)))
    trusted = resolve_weights("random", entry, hub=HubAccess(allow_download=False, trust_remote_code=True))
    network = build_network(entry, trusted)
    assert type(network.model).__name__ == "TinyVision" and network.preprocessing.crop == 32
    assert network.run(network.model, torch.zeros(1, 3, 32, 32)).shape == (1, 8)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'source = "timm"\narchitecture = "convnextv2_tinny"\n',
            r"timm has no model 'convnextv2_tinny'; did you mean convnextv2_tiny",
        ),
        (
            'source = "timm"\narchitecture = "convnextv2_tiny"\nweights = "in1k_typo"\n',
            r"no pretrained tag 'in1k_typo' .* its tags are .*fcmae_ft_in22k_in1k",
        ),
        (
            'source = "timm"\narchitecture = "vit_small_patch14_dinov2"\ninput_size = 230\n',
            r"input_size 230 is not a whole number of 14-pixel patches; try 224",
        ),
        (
            'source = "timm"\narchitecture = "resnet18"\ninput_size = 160\n',
            r"timm's ResNet has no set_input_size; remove input_size",
        ),
        (
            'source = "open_clip"\narchitecture = "ViT-B-23"\n',
            r"open_clip has no model 'ViT-B-23'; did you mean .*ViT-B-32",
        ),
        (
            'source = "open_clip"\narchitecture = "ViT-B-32"\nweights = "laion3b"\n',
            r"no pretrained tag 'laion3b' for ViT-B-32; its tags are openai",
        ),
    ],
)
def test_unknown_names_and_sizes_that_cannot_be_served_say_what_to_change(tmp_path, text, message):
    (tmp_path / "typo.toml").write_text(text)
    entry = load_entry(tmp_path, "typo")
    with pytest.raises(StartupError, match=message):
        build_network(entry, resolve_weights("random", entry))


def test_a_torchvision_server_never_imports_the_other_libraries():
    """A ResNet server starts no slower for their existence: none of them is even imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from service.core.settings import Settings\n"
        "from service.dataplane.plane import DataPlane\n"
        "DataPlane.from_settings(Settings(models='resnet18,vit_b_16', weights='random', device='cpu'))\n"
        "print(sorted(m for m in ('timm', 'transformers', 'open_clip', 'huggingface_hub') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
