from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import clean_env, free_port, run_cli, start_server, stop_cleanly, wait_json

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
    assert set(payload) == {"facts", "profile", "llama_cpu"}
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


def test_serve_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = start_server(tmp_path / "data", port, "--log-format", "json")
    try:
        health = wait_json(f"http://127.0.0.1:{port}/health", proc)
        assert health["status"] == "ok"
        assert health["version"]
        assert health["profile"]["threads"] >= 1
        assert health["board"]
        records = stop_cleanly(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
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
