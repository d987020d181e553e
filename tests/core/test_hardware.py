"""Device-aware defaults: the fast dtype per device, and the sizes that follow the device."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from service.core.hardware import (
    available_cores,
    cgroup_cpu_quota,
    compute_dtype,
    cpu_flags,
    cuda_expected,
    default_sizing,
    fast_dtype,
    torch_threads_per_worker,
)
from service.core.settings import Settings
from service.dataplane.plane import DataPlane
from service.runners.seams import RunnerSeams


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


def test_compute_dtype_follows_the_setting_the_precision_and_the_flags():
    assert compute_dtype("auto", "float32", "cpu", ()) == "float32"
    assert compute_dtype("auto", "float32", "cpu", ("amx_bf16",)) == "bfloat16"
    assert compute_dtype("float16", "float32", "cpu", ("amx_bf16",)) == "float16"
    assert compute_dtype("auto", "int8", "cpu", ("amx_bf16",)) == "float32"  # int8 takes float32 inputs
    assert compute_dtype("auto", "float32", "cpu") == fast_dtype("cpu", cpu_flags())  # default: this CPU's


def test_auto_dtype_is_what_the_model_runs_in_and_info_says_so(weights_file):
    """With the CPU's flags made to lack bf16, auto runs float32; with AVX-512 BF16, bfloat16, and says so."""
    for flags, expected in (((), "float32"), (("avx512f", "avx512_bf16"), "bfloat16")):
        settings = Settings(weights=str(weights_file), device="cpu")
        plane = DataPlane.from_settings(settings, seams=RunnerSeams(cpu_flags=flags))
        plane.start()
        try:
            assert plane.wait_ready(60), plane.failure
            info = plane.describe()
            assert (info["dtype_setting"], info["dtype"], info["cpu_flags"]) == ("auto", expected, list(flags))
            assert plane.extract([_tiny_jpeg()]).features["avgpool"].dtype.name == "float32"
        finally:
            plane.close()


def _tiny_jpeg() -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(data, "JPEG")
    return data.getvalue()


def test_sizes_follow_the_device_unless_set(monkeypatch):
    monkeypatch.delenv("LAYERTAP_WORKERS", raising=False)  # tests/conftest.py sets it for the suite's servers
    assert default_sizing(cuda=True, cores=16).workers == 8 and default_sizing(cuda=True, cores=2).workers == 1
    assert default_sizing(cuda=True, cores=64).workers == 8
    # CPU: two workers that split the cores, one on a single core
    assert [default_sizing(cuda=False, cores=n).workers for n in (1, 2, 16)] == [1, 2, 2]
    cpu, gpu = Settings(device="cpu"), Settings(device="cuda")
    assert cpu.workers == default_sizing(cuda=False).workers
    assert (cpu.threads, cpu.max_batch_size, cpu.max_queue_images) == (64, 16, 32)
    assert (gpu.threads, gpu.max_batch_size, gpu.max_queue_images) == (320, 64, 256)
    assert default_sizing(cuda=True, cores=5).workers == 2  # a worker per 2 cores, rounded down
    assert gpu.workers == default_sizing(cuda=True, cores=available_cores()).workers  # Settings uses the sizing
    assert Settings(device="cuda", max_batch_size=8, workers=2).max_batch_size == 8


def test_sizes_set_in_the_environment_win(monkeypatch):
    monkeypatch.setenv("LAYERTAP_DEVICE", "cuda")
    monkeypatch.setenv("LAYERTAP_MAX_BATCH_SIZE", "32")
    monkeypatch.setenv("LAYERTAP_WORKERS", "3")
    settings = Settings()
    assert (settings.max_batch_size, settings.workers, settings.max_queue_images) == (32, 3, 256)


def test_hidden_gpus_mean_cpu_sizes(monkeypatch):
    def driver(path: str) -> bool:
        return path == "/dev/nvidiactl"

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert cuda_expected("auto", exists=driver)
    assert not cuda_expected("auto", exists=lambda path: False) and not cuda_expected("cpu", exists=driver)
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not cuda_expected("auto", exists=driver) and cuda_expected("cuda")


def test_torch_threads_divide_the_cores():
    assert torch_threads_per_worker(2, cores=8) == 4
    assert torch_threads_per_worker(16, cores=8) == 1
    assert torch_threads_per_worker(3, cores=8) == 2  # never more threads than cores, in all
    assert torch_threads_per_worker(1, cores=1) == 1


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"proc": "0::/pod/app\n", "pod/app/cpu.max": "250000 100000\n"}, 2.5),  # cgroup v2, nested
        ({"proc": "0::/\n", "cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"proc": "4:cpu,cpuacct:/kubepods/x\n", "cpu/kubepods/x/cpu.cfs_quota_us": "400000",
          "cpu/kubepods/x/cpu.cfs_period_us": "100000"}, 4.0),  # cgroup v1
        ({"proc": "4:cpu,cpuacct:/\n", "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({}, None),  # no cgroup file at all
    ],
)  # fmt: skip
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2(tmp_path, files, expected):
    root = tmp_path / "sys"
    for name, text in files.items():
        path = tmp_path / "self-cgroup" if name == "proc" else root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert cgroup_cpu_quota(root, tmp_path / "self-cgroup") == expected
