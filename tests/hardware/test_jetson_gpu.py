"""The Jetson's GPU path on recorded facts: JetPack's libraries, provider lists, reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mongars_edge.hardware import probe, profile_for
from mongars_edge.inference import onnx
from mongars_edge.inference.onnx import CPU, CUDA, TENSORRT, Opened
from mongars_edge.inference.onnx_report import JETSON_FIX, report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SYSROOTS = FIXTURES / "sysroots"
PROVIDERS = FIXTURES / "jetson" / "providers"
GPU_BUILD = "onnxruntime-gpu-1.24.0-jp6-cu126.json"
PYPI_BUILD = "onnxruntime-1.23.2-pypi-aarch64.json"


def _providers(name: str) -> tuple[str, ...]:
    return tuple(json.loads((PROVIDERS / name).read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("sysroot", "jetpack", "tensorrt", "cudnn"),
    [
        ("jetson-agx-orin-64gb", "6.2+b77", "10.3.0", "9.3.0"),
        ("jetson-orin-nano-8gb", "6.0+b106", "8.6.2", "8.9.4"),
        ("pi5-8gb", None, None, None),
        ("x86-vm-amx", None, None, None),
    ],
)
def test_jetpack_libraries_are_read(
    sysroot: str, jetpack: str | None, tensorrt: str | None, cudnn: str | None
) -> None:
    facts = probe(SYSROOTS / sysroot)
    assert (facts.jetpack_package, facts.tensorrt, facts.cudnn) == (jetpack, tensorrt, cudnn)
    assert not [w for w in facts.warnings if "TensorRT" in w]


def _copy(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(SYSROOTS / name, root, symlinks=True)
    return root


def test_a_jetson_without_jetpack_says_tensorrt_is_missing(tmp_path: Path) -> None:
    """L4T's BSP without `apt install nvidia-jetpack`: no TensorRT, no cuDNN, no meta-package."""
    root = _copy(tmp_path, "jetson-agx-orin-64gb")
    shutil.rmtree(root / "usr/lib/aarch64-linux-gnu")
    (root / "var/lib/dpkg/status").write_text(
        "Package: nvidia-jetpack\nStatus: deinstall ok config-files\nVersion: 6.2+b77\n\n",
        encoding="utf-8",
    )
    facts = probe(root)
    assert (facts.tensorrt, facts.cudnn, facts.jetpack_package) == (None, None, None)
    assert any("no TensorRT (libnvinfer.so.*)" in w for w in facts.warnings)
    # The provider is in the GPU build, the library it loads is not: /health says how to get it.
    problems = report(
        profile_for(facts).onnx_providers,
        jetson=True,
        tensorrt_lib=facts.tensorrt,
        present=_providers(GPU_BUILD),
        package="onnxruntime-gpu 1.24.0",
        sessions=(),
    ).problems()
    assert len(problems) == 1
    assert "TensorRT itself (libnvinfer) is not installed" in problems[0]
    assert "sudo apt install nvidia-jetpack" in problems[0]


def test_a_garbled_dpkg_status_is_no_jetpack(tmp_path: Path) -> None:
    root = _copy(tmp_path, "jetson-orin-nano-8gb")
    (root / "var/lib/dpkg/status").write_bytes(b"\xff\xfePackage nvidia-jetpack\n\0\0")
    facts = probe(root)
    assert facts.jetpack_package is None
    assert facts.tensorrt == "8.6.2"


def _jetson_report(present: str, **kw: object) -> list[str]:
    facts = probe(SYSROOTS / "jetson-agx-orin-64gb")
    wanted = profile_for(facts).onnx_providers
    assert wanted == (TENSORRT, CUDA, CPU)
    return report(
        wanted,
        jetson=True,
        tensorrt_lib=facts.tensorrt,
        present=_providers(present),
        package=str(kw.get("package", "onnxruntime 1.31.1")),
        sessions=tuple(kw.get("sessions", ())),  # type: ignore[arg-type]
    ).problems()


def test_pypi_onnxruntime_on_a_jetson_is_a_problem_with_its_fix() -> None:
    [problem] = _jetson_report(PYPI_BUILD)
    assert "has no TensorRT or CUDA provider" in problem
    assert "present: AzureExecutionProvider, CPU" in problem
    assert "run on the CPU" in problem
    assert f"Fix: {JETSON_FIX} (it installs NVIDIA's onnxruntime-gpu" in problem


def test_nvidia_onnxruntime_gpu_on_jetpack_6_2_is_no_problem() -> None:
    assert _jetson_report(GPU_BUILD, package="onnxruntime-gpu 1.24.0") == []


def test_a_gpu_build_without_tensorrt_runs_on_cuda_and_says_so() -> None:
    facts = probe(SYSROOTS / "jetson-agx-orin-64gb")
    present = tuple(p for p in _providers(GPU_BUILD) if p != TENSORRT)
    rep = report(
        profile_for(facts).onnx_providers, jetson=True, tensorrt_lib="10.3.0", present=present,
        package="onnxruntime-gpu 1.24.0", sessions=(),
    )  # fmt: skip
    assert rep.missing == (TENSORRT,)
    [problem] = rep.problems()
    assert "has no TensorRT provider" in problem and "run on CUDA without TensorRT" in problem


def test_a_provider_that_failed_to_open_a_model_is_reported() -> None:
    fell_back = Opened(
        "en_US-joe-medium.onnx",
        (TENSORRT, CUDA, CPU),
        CPU,
        (
            (TENSORRT, "did not initialise (onnxruntime fell back)"),
            (CUDA, "libcudnn.so.9: cannot open"),
        ),
    )
    [problem] = _jetson_report(GPU_BUILD, package="onnxruntime-gpu 1.24.0", sessions=[fell_back])
    assert "en_US-joe-medium.onnx wanted TensorRT and runs on CPU" in problem


def test_a_box_without_a_gpu_wants_nothing_more_than_the_cpu() -> None:
    facts = probe(SYSROOTS / "pi5-8gb")
    rep = report(
        profile_for(facts).onnx_providers, present=_providers(PYPI_BUILD), package="x", sessions=()
    )
    assert rep.missing == () and rep.problems() == []


@pytest.mark.parametrize(
    ("present", "chain"),
    [(GPU_BUILD, [TENSORRT, CUDA, CPU]), (PYPI_BUILD, [CPU])],
)
def test_selection_on_recorded_provider_lists(
    tmp_path: Path, present: str, chain: list[str]
) -> None:
    wanted = profile_for(probe(SYSROOTS / "jetson-orin-nano-8gb")).onnx_providers
    specs = onnx.provider_specs(wanted, cache_dir=tmp_path / "voice", available=_providers(present))
    assert [name for name, _ in specs] == chain
    if TENSORRT in chain:
        options = dict(specs)[TENSORRT]
        assert options["trt_engine_cache_path"] == str(tmp_path / "voice")
        assert options["trt_engine_cache_enable"] and options["trt_fp16_enable"]
    else:
        assert not (tmp_path / "voice").exists()


def test_the_report_dict_is_what_health_shows() -> None:
    facts = probe(SYSROOTS / "jetson-agx-orin-64gb")
    opened = Opened("embedder (e5-small-q4.bin)", (CUDA, CPU), CUDA)
    data = report(
        profile_for(facts).onnx_providers, jetson=True, present=_providers(GPU_BUILD),
        package="onnxruntime-gpu 1.24.0", sessions=[opened],
    ).to_dict()  # fmt: skip
    assert json.loads(json.dumps(data)) == {
        "wanted": [TENSORRT, CUDA, CPU],
        "present": [TENSORRT, CUDA, CPU],
        "package": "onnxruntime-gpu 1.24.0",
        "missing": [],
        "sessions": {"embedder (e5-small-q4.bin)": {"provider": CUDA, "wanted": [CUDA, CPU]}},
    }


def test_the_watchdog_is_widened_only_where_voices_may_build_engines() -> None:
    from mongars_edge.runtime import trt_build_window

    jetson = profile_for(probe(SYSROOTS / "jetson-agx-orin-64gb")).onnx_providers
    pi = profile_for(probe(SYSROOTS / "pi5-8gb")).onnx_providers
    assert trt_build_window(jetson, _providers(GPU_BUILD)) >= 600
    assert trt_build_window(jetson, _providers(PYPI_BUILD)) == 0
    assert trt_build_window(pi, _providers(GPU_BUILD)) == 0
