"""POST /v1/audio/speech and /v1/audio/transcriptions on a real Runtime, with real models."""

from __future__ import annotations

import asyncio
import io
import socket
import wave
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
import uvicorn
import uvicorn.protocols.http.h11_impl

from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.speech.audio import float_to_pcm16, pcm16_to_float, resample, wav_bytes
from mongars_edge.speech.stt import SpeechToText
from mongars_edge.speech.tts import TextToSpeech
from mongars_edge.web import create_app
from tests.support.accounts import bearer, login_as
from tests.support.server import TEST_SETTINGS
from tests.support.speech import wer

# One Runtime and one server for the module: opening a Runtime per test costs more than the
# tests themselves. Tests that change the runtime put it back.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(
    tmp_path_factory: pytest.TempPathFactory, tts: TextToSpeech, stt: SpeechToText
) -> AsyncIterator[Runtime]:
    # Speech off at open (no second load); the session's voices and model are lent instead.
    data_dir = tmp_path_factory.mktemp("audio")
    settings = load_settings(environ={}, cli={"data_dir": data_dir, **TEST_SETTINGS})
    async with Runtime(settings) as opened:
        opened.speech, opened.stt = tts, stt
        yield opened
        opened.speech = opened.stt = None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app served by a real uvicorn on a loopback port (real streaming)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # h11 and no WebSocket support: nothing imported lazily inside the event loop.
    config = uvicorn.Config(
        create_app(runtime), log_config=None, lifespan="off", http="h11", ws="none"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            c.headers.update(await bearer(runtime, "ada"))
            yield c
    finally:
        server.should_exit = True
        await task
        sock.close()


def _wav_pcm(data: bytes) -> tuple[bytes, int]:
    """Our streamed WAV has placeholder sizes; read the header, then take the rest."""
    with wave.open(io.BytesIO(data[:44]), "rb") as wav:
        rate = wav.getframerate()
    return data[44:], rate


async def test_speech_then_transcription_round_trip(client: httpx.AsyncClient) -> None:
    text = "Remind me to call my sister at noon. She is waiting for news."
    spoken = await client.post(
        "/v1/audio/speech", json={"model": "tts-1", "input": text, "voice": "alloy"}
    )
    assert spoken.status_code == 200, spoken.text
    assert spoken.headers["content-type"] == "audio/wav"
    assert spoken.headers["x-voice"] == "joe"
    pcm, rate = _wav_pcm(spoken.content)
    assert rate == 22050 and len(pcm) > rate * 2
    upload = {"file": ("speech.wav", wav_bytes(pcm, rate), "audio/wav")}
    heard = await client.post("/v1/audio/transcriptions", files=upload, data={"model": "whisper-1"})
    assert heard.status_code == 200, heard.text
    assert wer(text, heard.json()["text"]) <= 0.2, heard.json()
    short = {"file": ("s.wav", wav_bytes(b"\x00\x00" * 16000, 16000), "audio/wav")}
    as_text = await client.post(
        "/v1/audio/transcriptions", files=short, data={"response_format": "text"}
    )
    assert as_text.headers["content-type"].startswith("text/plain")
    assert as_text.text == "\n"
    verbose = await client.post(
        "/v1/audio/transcriptions", files=short, data={"response_format": "verbose_json"}
    )
    body = verbose.json()
    assert body["language"] == "en" and body["duration"] == 1.0


async def test_pcm_is_24_khz_like_openai(client: httpx.AsyncClient) -> None:
    spoken = await client.post(
        "/v1/audio/speech", json={"input": "Hello there.", "response_format": "pcm"}
    )
    assert spoken.status_code == 200
    assert spoken.headers["x-sample-rate"] == "24000"
    assert len(spoken.content) % 2 == 0 and len(spoken.content) > 24000  # > 0.5 s


async def test_french_text_gets_the_french_voice(client: httpx.AsyncClient) -> None:
    spoken = await client.post(
        "/v1/audio/speech", json={"input": "Bonjour, je suis content de vous voir."}
    )
    assert spoken.status_code == 200
    assert spoken.headers["x-language"] == "fr"
    assert spoken.headers["x-voice"] == "espeak-fr"


async def test_100_kb_input_streams_and_the_client_can_leave(client: httpx.AsyncClient) -> None:
    text = "The weather is mild and the garden is green. " * 2300
    assert len(text) > 100_000
    async with client.stream("POST", "/v1/audio/speech", json={"input": text}) as response:
        assert response.status_code == 200
        got = 0
        async for part in response.aiter_bytes():
            got += len(part)
            if got > 22050 * 2 * 3:  # three seconds of audio, then hang up
                break
    assert got > 0
    # The box stopped speaking when the client left: its voice is free at once.
    again = await client.post("/v1/audio/speech", json={"input": "Still here."})
    assert again.status_code == 200


BAD_SPEECH: list[tuple[dict[str, object], str]] = [
    ({"input": ""}, "empty"),
    ({"input": "   "}, "empty"),
    ({}, "input"),
    ({"input": "Hi.", "voice": "nobody"}, "unknown voice"),
    ({"input": "Hi.", "response_format": "mp3"}, "response_format"),
    ({"input": "Hi.", "speed": 10}, "speed"),
    ({"input": 42}, "input"),
    ({"input": "x" * 200_001}, "at most"),
]


async def test_bad_speech_requests_are_clear(client: httpx.AsyncClient) -> None:
    for body, words in BAD_SPEECH:
        response = await client.post("/v1/audio/speech", json=body)
        assert response.status_code == 400, body
        assert words in response.json()["error"]["message"], body
    not_json = await client.post(
        "/v1/audio/speech", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400


async def test_bad_uploads_are_clear(client: httpx.AsyncClient) -> None:
    corrupt = {"file": ("x.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 20, "audio/wav")}
    response = await client.post("/v1/audio/transcriptions", files=corrupt)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_audio"
    empty = await client.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"")})
    assert empty.status_code == 400
    missing = await client.post("/v1/audio/transcriptions", data={"model": "whisper-1"})
    assert missing.status_code == 400
    assert "file" in missing.json()["error"]["message"]
    as_json = await client.post("/v1/audio/transcriptions", json={"file": "abc"})
    assert as_json.status_code == 400
    silence = {"file": ("s.wav", wav_bytes(b"\x00\x00" * 8000, 8000), "audio/wav")}
    quiet = await client.post("/v1/audio/transcriptions", files=silence)
    assert quiet.status_code == 200 and quiet.json() == {"text": ""}
    srt = await client.post(
        "/v1/audio/transcriptions", files=silence, data={"response_format": "srt"}
    )
    assert srt.status_code == 400


async def test_odd_rate_upload(client: httpx.AsyncClient, tts: TextToSpeech) -> None:
    text = "Open the garage door for the car."
    chunks = [c async for c in tts.stream(text)]
    pcm = b"".join(c.pcm for c in chunks)
    odd = float_to_pcm16(resample(pcm16_to_float(pcm), 22050, 37800))
    upload = {"file": ("odd.wav", wav_bytes(odd, 37800), "audio/x-wav")}
    response = await client.post("/v1/audio/transcriptions", files=upload)
    assert wer(text, response.json()["text"]) <= 0.25, response.json()


async def test_auth_is_required_and_status_says_what_is_on(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as anon:
        assert (await anon.post("/v1/audio/speech", json={"input": "Hi."})).status_code == 401
        no_file = await anon.post("/v1/audio/transcriptions", files={"file": ("x.wav", b"")})
        assert no_file.status_code == 401
        assert (await anon.get("/api/speech")).status_code == 401
        # A browser session also needs its CSRF token to post.
        csrf = await login_as(anon, runtime, "grace")
        no_csrf = await anon.post("/v1/audio/speech", json={"input": "Hi."})
        assert no_csrf.status_code == 403
        ok = await anon.post(
            "/v1/audio/speech", json={"input": "Hi."}, headers={"X-CSRF-Token": csrf}
        )
        assert ok.status_code == 200
    info = (await client.get("/api/speech")).json()
    assert info["tts"] and info["stt"]
    assert {v["name"] for v in info["voices"]} >= {"joe", "espeak-fr"}


async def test_speech_off_is_503(runtime: Runtime, client: httpx.AsyncClient) -> None:
    lent = runtime.speech, runtime.stt
    runtime.speech = runtime.stt = None
    try:
        await _speech_off_checks(client)
    finally:
        runtime.speech, runtime.stt = lent


async def _speech_off_checks(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/audio/speech", json={"input": "Hi."})
    assert response.status_code == 503
    assert "speech" in response.json()["error"]["message"]
    upload = {"file": ("s.wav", wav_bytes(b"\x00\x00" * 800, 8000))}
    assert (await client.post("/v1/audio/transcriptions", files=upload)).status_code == 503
    info = (await client.get("/api/speech")).json()
    assert info == {
        "tts": False,
        "stt": False,
        "voices": [],
        "stt_languages": [],
        "wyoming_port": None,
    }
