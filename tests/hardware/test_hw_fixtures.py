"""Each recorded sysroot yields the expected facts and a pinned tuning profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from mongars_edge.hardware import HardwareFacts, probe, profile_for
from mongars_edge.inference.catalog import auto_options

SYSROOTS = Path(__file__).resolve().parents[1] / "fixtures" / "sysroots"
JETSON_ONNX = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU_ONNX = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class Expect:
    board: str
    arch: str
    cpu_count: int
    mem_total_mb: int
    cuda: bool
    jetpack: str | None
    power_mode: str | None
    storage: str
    backend: str
    threads: int
    parallel: int
    tier: str
    providers: tuple[str, ...]
    speech: bool
    stt: bool
    model: str
    stt_model: str


Q15, Q05 = "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"
CASES = {
    "pi5-8gb": Expect(
        "raspberry-pi-5", "aarch64", 4, 8062, False, None, None, "sd",
        "llama.cpp-cpu", 4, 4, "medium", CPU_ONNX, True, True, Q15, "whisper-base",
    ),
    "pi4-4gb": Expect(
        "raspberry-pi-4", "aarch64", 4, 3793, False, None, None, "ssd",
        "llama.cpp-cpu", 4, 2, "small", CPU_ONNX, True, False, Q05, "tiny.en",
    ),
    "pi4-2gb": Expect(
        "raspberry-pi-4", "aarch64", 4, 1848, False, None, None, "ssd",
        "llama.cpp-cpu", 4, 1, "small", CPU_ONNX, True, False, Q05, "tiny.en",
    ),
    # The largest catalog model a box may choose is the 1.5B: a Jetson gets it too.
    "jetson-orin-nano-8gb": Expect(
        "jetson-orin-nano", "aarch64", 6, 7619, True, "6.0", "15W", "nvme",
        "llama.cpp-cuda", 5, 4, "large", JETSON_ONNX, True, True, Q15, "whisper-base",
    ),
    "jetson-agx-orin-64gb": Expect(
        "jetson-agx-orin", "aarch64", 12, 62827, True, "6.2", "MAXN", "emmc",
        "llama.cpp-cuda", 11, 8, "large", JETSON_ONNX, True, True, Q15, "whisper-base",
    ),
    # Two AVX2 cores generate 15-24 tok/s with the 1.5B (docs/inference.md).
    "x86-vm-amx": Expect(
        "x86_64-generic", "x86_64", 2, 7940, False, None, None, "virtual",
        "llama.cpp-cpu", 2, 4, "medium", CPU_ONNX, True, True, Q15, "whisper-base",
    ),
}  # fmt: skip


def _facts(name: str) -> HardwareFacts:
    return probe(SYSROOTS / name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_facts(name: str) -> None:
    facts, want = _facts(name), CASES[name]
    got = (
        facts.board,
        facts.arch,
        facts.cpu_count,
        facts.mem_total_mb,
        facts.cuda,
        facts.jetpack,
        facts.power_mode,
        facts.storage,
    )
    assert got == (
        want.board,
        want.arch,
        want.cpu_count,
        want.mem_total_mb,
        want.cuda,
        want.jetpack,
        want.power_mode,
        want.storage,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_profile(name: str) -> None:
    profile, want = profile_for(_facts(name), auto_options()), CASES[name]
    got = (
        profile.backend,
        profile.n_threads,
        profile.n_parallel,
        profile.model_tier,
        profile.onnx_providers,
        profile.speech,
        profile.stt,
        profile.model,
        profile.stt_model,
    )
    assert got == (
        want.backend,
        want.threads,
        want.parallel,
        want.tier,
        want.providers,
        want.speech,
        want.stt,
        want.model,
        want.stt_model,
    )
    assert profile.reasons["model"].startswith("the largest catalog model")
    assert profile.source == "heuristic"
    assert set(profile.reasons) == set(profile.to_dict()) - {"reasons", "source"}
    assert all(reason.strip() for reason in profile.reasons.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_probe_is_clean(name: str) -> None:
    """Recorded sysroots are complete: the only warning allowed is a VM without sensors."""
    warnings = _facts(name).warnings
    expected = ("no thermal zones under /sys/class/thermal",) if name == "x86-vm-amx" else ()
    assert warnings == expected


def test_pi5_details() -> None:
    facts = _facts("pi5-8gb")
    assert facts.board_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert facts.cpu_model == "Cortex-A76"
    assert "asimddp" in facts.cpu_flags
    assert facts.throttled is False
    assert facts.max_temp_c == pytest.approx(52.35)
    assert facts.audio_cards == ("vc4-hdmi-0", "vc4-hdmi-1")
    assert facts.storage_device == "mmcblk0"
    assert not facts.is_virtual


def test_pi4_reads_sys_firmware_device_tree_and_past_throttling_is_not_now() -> None:
    facts = _facts("pi4-4gb")
    assert facts.board_model == "Raspberry Pi 4 Model B Rev 1.4"
    assert facts.cpu_model == "Cortex-A72"
    assert "asimddp" not in facts.cpu_flags
    assert facts.throttled is False  # 0x50000: only the "has occurred" bits are set


def test_jetson_orin_nano_details() -> None:
    facts = _facts("jetson-orin-nano-8gb")
    assert facts.l4t_release == "R36.3.0"
    assert facts.cpu_model == "Cortex-A78AE"
    assert facts.cuda_runtime == "/usr/local/cuda-12.2/lib64/libcudart.so.12"
    assert "nvhost-ctrl-gpu" in facts.gpu_nodes
    cv_zones = [z for z in facts.thermal_zones if z.name.startswith("cv")]
    assert len(cv_zones) == 3
    assert all(z.temp_c is None for z in cv_zones)
    assert facts.max_temp_c == pytest.approx(47.281)
    assert profile_for(facts).n_gpu_layers == 999


def test_agx_orin_details() -> None:
    facts = _facts("jetson-agx-orin-64gb")
    assert facts.l4t_release == "R36.4.3"
    assert facts.board_model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert profile_for(facts).ctx_size == 8192


def test_x86_vm_amx_is_recorded_but_not_relied_on() -> None:
    facts = _facts("x86-vm-amx")
    assert facts.amx_advertised
    assert facts.is_virtual
    assert {"avx2", "avx512f", "amx_tile"} <= set(facts.cpu_flags)
    profile = profile_for(facts)
    assert profile.n_gpu_layers == 0
    assert "AMX" in profile.reasons["backend"]


def test_data_dir_on_another_mount_is_classified_by_that_mount() -> None:
    facts = probe(SYSROOTS / "pi5-8gb", data_dir=Path("/boot/firmware/mongars"))
    assert (facts.storage, facts.storage_device) == ("sd", "mmcblk0")
