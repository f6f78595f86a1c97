"""Missing, garbled and odd sources give safe defaults and named warnings, never exceptions."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from mongars_edge.hardware import probe, profile_for

SYSROOTS = Path(__file__).resolve().parents[1] / "fixtures" / "sysroots"
GARBAGE = bytes(range(256)) * 16


def _copy(name: str, tmp_path: Path) -> Path:
    root = tmp_path / name
    shutil.copytree(SYSROOTS / name, root, symlinks=True)
    return root


def _write(root: Path, rel: str, data: bytes | str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)


def _warned(warnings: tuple[str, ...], needle: str) -> bool:
    return any(needle in w for w in warnings)


def test_empty_sysroot_gives_safe_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mongars_edge.hardware.probe"):
        facts = probe(tmp_path)
    assert (facts.board, facts.arch, facts.cpu_count) == ("unknown", "unknown", 1)
    assert (facts.mem_total_mb, facts.mem_available_mb, facts.swap_total_mb) == (0, 0, 0)
    assert not facts.cuda
    assert facts.storage == "unknown"
    assert facts.cpu_flags == ()
    for needle in ("/proc/cpuinfo", "/proc/meminfo", "device-tree", "thermal", "mount"):
        assert _warned(facts.warnings, needle), needle
    assert len(caplog.records) == len(facts.warnings)
    profile = profile_for(facts)
    assert (profile.n_threads, profile.n_parallel, profile.model_tier) == (1, 1, "tiny")
    assert not profile.speech
    assert not profile.stt


def test_binary_garbage_in_cpuinfo_and_meminfo(tmp_path: Path) -> None:
    root = _copy("pi5-8gb", tmp_path)
    _write(root, "proc/cpuinfo", GARBAGE)
    _write(root, "proc/meminfo", GARBAGE)
    facts = probe(root)
    assert _warned(facts.warnings, "/proc/cpuinfo has no processor entries")
    assert _warned(facts.warnings, "/proc/meminfo has no MemTotal")
    assert facts.mem_total_mb == 0
    assert facts.cpu_count == 4  # falls back to /sys/devices/system/cpu/online
    assert facts.board == "raspberry-pi-5"  # the device tree still says what it is


def test_directory_where_a_file_belongs(tmp_path: Path) -> None:
    """Root can read a chmod 000 file, so an unreadable source is simulated with a directory."""
    root = _copy("pi5-8gb", tmp_path)
    for rel in ("proc/device-tree/model", "proc/cpuinfo", "proc/meminfo"):
        (root / rel).unlink()
        (root / rel).mkdir()
    facts = probe(root)
    for rel in ("/proc/device-tree/model", "/proc/cpuinfo", "/proc/meminfo"):
        assert _warned(facts.warnings, f"{rel} is unreadable"), rel
    # The compatible string still identifies the board; the model string is gone.
    assert facts.board == "raspberry-pi-5"
    assert facts.board_model == ""  # model, cpuinfo and DMI all unavailable


def test_missing_device_tree_on_arm_is_named(tmp_path: Path) -> None:
    root = _copy("jetson-orin-nano-8gb", tmp_path)
    shutil.rmtree(root / "proc" / "device-tree")
    facts = probe(root)
    assert _warned(facts.warnings, "device tree /proc/device-tree/model is missing")
    assert facts.board == "arm64-generic"
    assert facts.l4t_release == "R36.3.0"  # still read: nv_tegra_release exists


def test_garbled_tegra_release_thermal_and_throttle(tmp_path: Path) -> None:
    root = _copy("jetson-orin-nano-8gb", tmp_path)
    _write(root, "etc/nv_tegra_release", GARBAGE)
    _write(root, "sys/class/thermal/thermal_zone0/temp", "hot\n")
    (root / "var/lib/nvpmodel/status").unlink()
    facts = probe(root)
    assert facts.l4t_release is None
    assert facts.jetpack is None
    assert _warned(facts.warnings, "/etc/nv_tegra_release is garbled")
    assert _warned(facts.warnings, "thermal_zone0/temp is garbled")
    assert _warned(facts.warnings, "/var/lib/nvpmodel/status is missing")
    assert facts.power_mode == "15W"  # the config's default mode


def test_throttled_pi_reduces_threads_and_parallelism(tmp_path: Path) -> None:
    root = _copy("pi4-4gb", tmp_path)
    _write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", "50005\n")
    facts = probe(root)
    assert facts.throttled is True
    profile = profile_for(facts)
    assert (profile.n_threads, profile.n_parallel) == (3, 1)
    assert "throttling" in profile.reasons["n_threads"]
    assert "throttling" in profile.reasons["n_parallel"]


def test_hot_board_reduces_threads(tmp_path: Path) -> None:
    root = _copy("pi5-8gb", tmp_path)
    _write(root, "sys/class/thermal/thermal_zone0/temp", "83950\n")
    profile = profile_for(probe(root))
    assert (profile.n_threads, profile.n_parallel) == (3, 2)
    assert "84 C" in profile.reasons["n_threads"]


def test_cuda_toolkit_without_gpu_is_not_cuda(tmp_path: Path) -> None:
    root = _copy("x86-vm-amx", tmp_path)
    _write(root, "usr/local/cuda/lib64/libcudart.so.13", b"")
    facts = probe(root)
    assert facts.cuda_runtime == "/usr/local/cuda/lib64/libcudart.so.13"
    assert not facts.cuda
    assert profile_for(facts).backend == "llama.cpp-cpu"


def test_gpu_nodes_without_runtime_warn(tmp_path: Path) -> None:
    root = _copy("x86-vm-amx", tmp_path)
    _write(root, "dev/nvidia0", b"")
    _write(root, "dev/nvidiactl", b"")
    facts = probe(root)
    assert facts.cuda
    assert facts.gpu_nodes == ("nvidia0", "nvidiactl")
    assert _warned(facts.warnings, "no libcudart")
    profile = profile_for(facts)
    assert profile.onnx_providers == ("CUDAExecutionProvider", "CPUExecutionProvider")


def test_proc_mounts_fallback_and_dev_root(tmp_path: Path) -> None:
    """Without mountinfo, /proc/mounts is used; /dev/root is resolved by major:minor only."""
    root = _copy("pi5-8gb", tmp_path)
    (root / "proc/self/mountinfo").unlink()
    assert probe(root).storage == "sd"
    _write(root, "proc/self/mountinfo", "29 1 179:2 / / rw - ext4 /dev/root rw\n")
    facts = probe(root)
    assert (facts.storage, facts.storage_device) == ("sd", "mmcblk0")


def test_unknown_mmc_type_is_named(tmp_path: Path) -> None:
    root = _copy("pi5-8gb", tmp_path)
    (root / "sys/block/mmcblk0/device/type").unlink()
    facts = probe(root)
    assert facts.storage == "sd"
    assert _warned(facts.warnings, "/sys/block/mmcblk0/device/type is missing")


def test_sysroot_that_does_not_exist(tmp_path: Path) -> None:
    facts = probe(tmp_path / "nope")
    assert facts.board == "unknown"
    assert facts.warnings
