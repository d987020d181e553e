"""Device-aware defaults: the fast dtype per device, and the sizes that follow the device."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from service.app import create_app
from service.hardware import available_cores, cpu_flags, default_sizing, fast_dtype
from service.settings import Settings


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        ("cuda", (), "bfloat16"),  # float16 overflows inside MobileNetV3, EfficientNet, ConvNeXt
        ("cpu", ("avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"), "bfloat16"),
        ("cpu", ("avx2", "avx512f", "avx512_bf16"), "bfloat16"),  # 1.5-2.4× float32 without AMX too
        ("cpu", ("avx2", "avx512f"), "float32"),  # bfloat16 would be emulated: slower
        ("cpu", (), "float32"),
    ],
)
def test_auto_dtype_is_the_device_fast_one(device, flags, expected):
    assert fast_dtype(device, flags) == expected


def test_auto_dtype_is_what_the_model_runs_in_and_info_says_so(weights_file):
    plane = create_app(Settings(weights=str(weights_file), device="cpu")).extensions["layertap.dataplane"]
    try:
        assert plane.wait_ready(60), plane.failure
        info = plane.describe()
        assert info["dtype_setting"] == "auto" and info["dtype"] == fast_dtype("cpu")
        assert info["cpu_flags"] == list(cpu_flags())
        assert plane.extract([_tiny_jpeg()]).features["avgpool"].dtype.name == "float32"
    finally:
        plane.close()


def _tiny_jpeg() -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(data, "JPEG")
    return data.getvalue()


def test_sizes_follow_the_device_unless_set():
    assert default_sizing(cuda=False) == default_sizing(cuda=False, cores=64)
    assert default_sizing(cuda=True, cores=16).workers == 8 and default_sizing(cuda=True, cores=2).workers == 1
    assert default_sizing(cuda=True, cores=64).workers == 8
    cpu, gpu = Settings(device="cpu"), Settings(device="cuda")
    assert (cpu.workers, cpu.max_batch_size, cpu.max_queue_images) == (1, 16, 32)
    sizing = default_sizing(cuda=True)
    assert (gpu.workers, gpu.max_batch_size, gpu.max_queue_images) == (
        sizing.workers,
        sizing.max_batch_size,
        sizing.max_queue_images,
    )
    assert Settings(device="cuda", max_batch_size=8, workers=2).max_batch_size == 8


def test_sizes_set_in_the_environment_win(monkeypatch):
    monkeypatch.setenv("LAYERTAP_DEVICE", "cuda")
    monkeypatch.setenv("LAYERTAP_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("LAYERTAP_WORKERS", "3")
    settings = Settings()
    assert (settings.max_batch_size, settings.workers, settings.max_queue_images) == (32, 3, 256)


def test_cores_are_those_this_process_may_use():
    """A container's CPU quota, not the host's core count, sizes workers and torch threads."""
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
    assert Settings(workers=1).effective_torch_threads() == available_cores()
