from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.env import clean_env, run_cli
from tests.support.server import start_server

REPO = Path(__file__).resolve().parent.parent
SYSROOTS = REPO / "tests" / "fixtures" / "sysroots"


def test_version_and_help() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert "mongars-edge" in result.stdout
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    for flag in ("--data-dir", "--host", "--port", "--model", "--no-mesh", "--no-speech"):
        assert flag in result.stdout


def test_probe_json_on_this_machine(tmp_path: Path) -> None:
    result = run_cli("probe", "--json", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"facts", "profile", "onnx", "llama_cpu"}
    assert payload["facts"]["cpu_count"] >= 1
    assert payload["profile"]["n_threads"] >= 1


@pytest.mark.parametrize("name", ["pi5-8gb", "jetson-orin-nano-8gb"])
def test_probe_json_on_recorded_sysroot(tmp_path: Path, name: str) -> None:
    result = run_cli(
        "probe", "--json", "--sysroot", str(SYSROOTS / name), "--data-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["facts"]["arch"] == "aarch64"
    assert payload["facts"]["board"].startswith(("raspberry-pi-5", "jetson-orin-nano"))
    assert payload["llama_cpu"] is None  # a recording is not this machine


def test_probe_plain_text_lists_reasons(tmp_path: Path) -> None:
    result = run_cli("probe", "--sysroot", str(SYSROOTS / "pi5-8gb"), "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "raspberry-pi-5" in result.stdout
    assert "n_threads" in result.stdout


def test_probe_reports_the_onnx_providers_present_on_a_jetson(tmp_path: Path) -> None:
    """A recorded AGX Orin probed beside this machine's onnxruntime (PyPI's, CPU only)."""
    args = (
        "probe",
        "--sysroot",
        str(SYSROOTS / "jetson-agx-orin-64gb"),
        "--data-dir",
        str(tmp_path),
    )
    payload = json.loads(run_cli(*args, "--json").stdout)
    onnx = payload["onnx"]
    assert onnx["wanted"] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    ]  # fmt: skip
    assert "CPUExecutionProvider" in onnx["present"]
    assert onnx["missing"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert payload["facts"]["tensorrt"] == "10.3.0"
    [problem] = onnx["problems"]
    assert "gpu-wheels.sh" in problem
    text = run_cli(*args).stdout
    assert "gpu         CUDA, JetPack 6.2+b77, TensorRT 10.3.0, cuDNN 9.3.0" in text
    assert "onnx        wants TensorrtExecutionProvider, CUDAExecutionProvider" in text
    assert f"problem     {problem}" in text


def test_bad_environment_value_is_one_line_exit_2() -> None:
    result = run_cli("probe", env=clean_env(MONGARS_PORT="lots"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "port" in lines[0] and "lots" in lines[0] and "allowed" in lines[0]


def test_bad_config_file_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("port = [1, 2\n")
    result = run_cli("probe", "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(config) in result.stderr


@pytest.mark.model  # the server loads SmolLM2
def test_serve_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", "--log-format", "json", wait=False)
    try:
        health = server.wait_healthy()
        assert health["status"] == "ok"
        assert health["version"]
        assert health["profile"]["threads"] >= 1
        assert health["board"]
        records = server.stop_cleanly(30)
    finally:
        server.stop()
    assert any(r["msg"] == "stopped cleanly" for r in records)


def test_serve_on_a_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--data-dir", str(tmp_path), "--port", str(port), "--no-mesh")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert str(port) in result.stderr
