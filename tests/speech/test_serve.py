"""`mongars-edge serve` with speech: the Runtime opens TTS, STT and the Wyoming server, and
closes them on SIGTERM; a broken speech setting is a clear error or a visible problem."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info

from tests.support.env import free_port, run_cli
from tests.support.server import Server, settings_env, start_server


def _serve(data_dir: Path, *, wait: bool = True, **settings: object) -> Server:
    env = settings_env(**({"speech": "on", "stt": "on"} | settings))
    return start_server(data_dir, "--log-format", "json", wait=wait, env=env)


async def _describe(port: int) -> Info:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), 60)
    assert event is not None
    return Info.from_event(event)


def test_serve_opens_speech_and_wyoming_and_closes_them(tmp_path: Path) -> None:
    wyoming = free_port()
    server = _serve(tmp_path / "data", wait=False, wyoming_port=wyoming)
    try:
        health = server.wait_healthy()
        assert health["status"] == "ok", health
        info = asyncio.run(_describe(wyoming))
        assert info.tts[0].voices[0].name == "joe"
        assert info.asr[0].models[0].name == "tiny.en"
        records = server.stop_cleanly()
    finally:
        server.stop()
    assert any(r["msg"] == "wyoming server listening" for r in records)
    with socket.socket() as probe:  # the Wyoming port is free again
        probe.bind(("127.0.0.1", wyoming))


def test_a_busy_wyoming_port_degrades_but_does_not_stop_the_box(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        nowhere = str(tmp_path / "nowhere")
        server = _serve(
            tmp_path / "data", wait=False, wyoming_port=taken, stt="off", stt_model=nowhere
        )
        try:
            health = server.wait_healthy()
        finally:
            server.stop()
    assert health["status"] == "degraded"
    assert any("Wyoming" in p and str(taken) in p for p in health["problems"]), health


def test_speech_on_with_a_broken_model_is_a_clear_error(tmp_path: Path) -> None:
    server = _serve(tmp_path / "data", wait=False, wyoming_port=0, stt_model=tmp_path / "nowhere")
    server.proc.wait(timeout=180)
    server.stop()  # reads its output to the end
    out = server.output()
    assert server.proc.returncode != 0
    assert "speech-to-text is on but cannot start" in out
    assert "model.bin" in out and "Traceback" not in out
    # With stt=auto the same mistake is a problem on /health, not a dead box: see above.
    assert run_cli("listen", "--help").returncode == 0
