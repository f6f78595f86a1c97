from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.env import clean_env, free_port, run_cli
from tests.support.server import start_server


def test_doctor_passes_on_a_good_box(tmp_path: Path) -> None:
    result = run_cli("doctor", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   chat model" in result.stdout
    assert "ok   sqlite-vec" in result.stdout


def test_doctor_fails_and_says_the_fix_for_a_missing_model(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    config = _config(tmp_path, missing)
    env = clean_env()
    del env["MONGARS_MODEL"]  # the config file names the model
    env_result = run_cli("doctor", "--data-dir", str(tmp_path), "--config", str(config), env=env)
    assert env_result.returncode == 1
    assert "FAIL chat model" in env_result.stdout
    assert "fix:" in env_result.stdout
    assert "Traceback" not in env_result.stdout + env_result.stderr


def _config(tmp_path: Path, model: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'model = "{model}"\n')
    return config


@pytest.mark.model  # the server loads SmolLM2
def test_chat_streams_an_answer_from_the_running_box(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    try:
        env = clean_env(MONGARS_PORT=str(server.port))
        result = run_cli("chat", "Say hello.", "--data-dir", str(data), env=env)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "conversation:" in result.stderr


def test_chat_with_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "local-admin.token").write_text("x" * 32)
    port = free_port()
    env = clean_env(MONGARS_PORT=str(port))
    result = run_cli("chat", "hello", "--data-dir", str(tmp_path), env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
