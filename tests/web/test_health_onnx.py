"""/health on a recorded Jetson: the ONNX providers wanted, present and used, and the fix."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import onnxruntime
import pytest

from mongars_edge.inference import onnx
from mongars_edge.inference.onnx_report import JETSON_FIX
from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.web import create_app
from tests.support.env import SYSROOTS

QUIET = {"model": "off", "mesh": False, "speech": "off", "stt": "off", "wyoming_port": 0}


@pytest.fixture
async def jetson_client(data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The box as it starts on an AGX Orin with PyPI's onnxruntime (this machine's, CPU only)."""
    onnx.SESSIONS.clear()
    cli = {"data_dir": data_dir, "sysroot": SYSROOTS / "jetson-agx-orin-64gb", **QUIET}
    async with Runtime(load_settings(environ={}, cli=cli)) as runtime:
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c
    onnx.SESSIONS.clear()


async def test_a_jetson_without_the_gpu_wheel_is_degraded_with_the_fix(
    jetson_client: httpx.AsyncClient,
) -> None:
    health = (await jetson_client.get("/health")).json()
    assert health["board"] == "jetson-agx-orin"
    present = onnxruntime.get_available_providers()
    assert onnx.CUDA not in present  # PyPI's build: what a Jetson has before gpu-wheels.sh
    assert health["onnx"]["wanted"] == [onnx.TENSORRT, onnx.CUDA, onnx.CPU]
    assert health["onnx"]["present"] == present
    assert health["onnx"]["missing"] == [onnx.TENSORRT, onnx.CUDA]
    assert health["onnx"]["package"] == f"onnxruntime {onnxruntime.__version__}"
    # The embedder opened for real: it wanted CUDA (TensorRT is left out for it), got the CPU.
    [embedder] = [v for k, v in health["onnx"]["sessions"].items() if k.startswith("embedder")]
    assert embedder == {"provider": onnx.CPU, "wanted": [onnx.CUDA, onnx.CPU]}
    assert health["status"] == "degraded"
    [problem] = [p for p in health["problems"] if "ONNX Runtime" in p]
    assert "has no TensorRT or CUDA provider" in problem and f"Fix: {JETSON_FIX}" in problem


async def test_a_box_without_a_gpu_has_no_onnx_problem(data_dir: Path) -> None:
    onnx.SESSIONS.clear()
    cli = {"data_dir": data_dir, "sysroot": SYSROOTS / "pi5-8gb", **QUIET}
    async with Runtime(load_settings(environ={}, cli=cli)) as runtime:
        report = runtime.onnx_report()
        assert report.wanted == (onnx.CPU,)
        assert report.problems() == []
        assert not [p for p in runtime.health_problems() if "ONNX" in p]
    onnx.SESSIONS.clear()
