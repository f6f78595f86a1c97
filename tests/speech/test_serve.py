"""`mongars-edge serve` with speech: the Runtime opens TTS, STT and the Wyoming server, and
closes them on SIGTERM; a broken speech setting is a clear error or a visible problem."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from pathlib import Path

from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from tests.helpers import clean_env, free_port, run_cli, start_server, stop_cleanly, wait_json
from tests.web.conftest import TEST_SETTINGS


def _env(**overrides: object) -> dict[str, str]:
    settings = TEST_SETTINGS | {"speech": "on", "stt": "on"} | overrides
    return clean_env(**{f"MONGARS_{k.upper()}": str(v) for k, v in settings.items()})


def _serve(data_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return start_server(data_dir, port, "--log-format", "json", env=env)


async def _describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), 60)
    assert event is not None
    return Info.from_event(event)


def test_serve_opens_speech_and_wyoming_and_closes_them(tmp_path: Path) -> None:
    port, wyoming = free_port(), free_port()
    proc = _serve(tmp_path / "data", port, _env(wyoming_port=wyoming))
    try:
        health = wait_json(f"http://127.0.0.1:{port}/health", proc, deadline_s=120)
        assert health["status"] == "ok", health
        info = asyncio.run(_describe(wyoming))
        assert info.tts[0].voices[0].name == "joe"
        assert info.asr[0].models[0].name == "tiny.en"
        records = stop_cleanly(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(r["msg"] == "wyoming server listening" for r in records)
    with socket.socket() as probe:  # the Wyoming port is free again
        probe.bind(("127.0.0.1", wyoming))


def test_a_busy_wyoming_port_degrades_but_does_not_stop_the_box(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = free_port()
        env = _env(wyoming_port=taken, stt="off", stt_model=str(tmp_path / "nowhere"))
        proc = _serve(tmp_path / "data", port, env)
        try:
            health = wait_json(f"http://127.0.0.1:{port}/health", proc, deadline_s=120)
        finally:
            proc.terminate()
            proc.communicate(timeout=60)
    assert health["status"] == "degraded"
    assert any("Wyoming" in p and str(taken) in p for p in health["problems"]), health


def test_speech_on_with_a_broken_model_is_a_clear_error(tmp_path: Path) -> None:
    env = _env(wyoming_port=0, stt_model=str(tmp_path / "nowhere"))
    proc = _serve(tmp_path / "data", free_port(), env)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "speech-to-text is on but cannot start" in out
    assert "model.bin" in out and "Traceback" not in out
    # With stt=auto the same mistake is a problem on /health, not a dead box: see above.
    assert run_cli("listen", "--help").returncode == 0
