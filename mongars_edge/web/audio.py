"""OpenAI-shaped speech routes: POST /v1/audio/speech, POST /v1/audio/transcriptions, and
GET /api/speech (what the page needs to know to offer voice)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from mongars_edge.errors import InvalidRequestError, UnavailableError
from mongars_edge.web.auth import require_user
from mongars_edge.web.http import BadFieldError, JsonReply, read_body
from mongars_edge.web.schemas import audio as wire
from mongars_edge.web.schemas.common import convert
from mongars_edge.web.schemas.routes import JSON, ApiRoute, Op

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime
    from mongars_edge.speech.stt import SpeechToText
    from mongars_edge.speech.tts import SpeechChunk, TextToSpeech

#: OpenAI's `pcm` format is 24 kHz 16-bit mono; clients assume that rate.
PCM_RATE: Final = 24_000


def _tts(request: Request) -> TextToSpeech:
    runtime: Runtime = request.app.state.runtime
    tts = runtime.speech
    if tts is None:
        raise UnavailableError("text-to-speech is off on this box (setting `speech`)")
    return tts


def _stt(request: Request) -> SpeechToText:
    runtime: Runtime = request.app.state.runtime
    stt = runtime.stt
    if stt is None:
        raise UnavailableError("speech-to-text is off on this box (setting `stt`)")
    return stt


async def status(request: Request) -> Response:
    """Which voice features this box offers (the chat page shows its buttons from this)."""
    await require_user(request)
    runtime: Runtime = request.app.state.runtime
    tts, stt, wyoming = runtime.speech, runtime.stt, runtime.wyoming
    voices = [
        wire.VoiceInfo(name=v.name, language=v.language, locale=v.locale, engine=v.engine)
        for v in (tts.voices() if tts is not None else [])
    ]
    return JsonReply(
        wire.SpeechStatus(
            tts=tts is not None,
            stt=stt is not None,
            voices=voices,
            stt_languages=stt.languages() if stt is not None else [],
            wyoming_port=wyoming.port if wyoming is not None else None,
        )
    )


async def speech(request: Request) -> Response:
    """Text in, audio out (WAV or raw PCM), streamed sentence by sentence."""
    await require_user(request)
    # The request is checked before the service: a bad body is a 400 whether speech is on or not.
    body = await read_body(request, wire.SpeechRequest)
    text, fmt, speed = body.input, body.response_format, body.speed
    voice_name = body.voice or None
    language = body.language or None
    from mongars_edge.speech.sentences import guess_language
    from mongars_edge.speech.tts import check_request

    check_request(text, speed)
    tts = _tts(request)
    tts.check_capacity()
    language = language or guess_language(text)
    voice = tts.pick(voice_name, language, text)  # unknown voice: 400 before any audio
    chunks = tts.stream(text, voice.info.name, language, speed)
    headers = {
        "X-Voice": voice.info.name,
        "X-Language": voice.info.language,
        "Cache-Control": "no-store",
    }
    if fmt == "pcm":
        headers["X-Sample-Rate"] = str(PCM_RATE)
        return StreamingResponse(_pcm(chunks), media_type="audio/pcm", headers=headers)
    headers["X-Sample-Rate"] = str(voice.sample_rate)
    return StreamingResponse(
        _wav(chunks, voice.sample_rate), media_type="audio/wav", headers=headers
    )


async def _wav(chunks: AsyncGenerator[SpeechChunk, None], rate: int) -> AsyncIterator[bytes]:
    from mongars_edge.speech.audio import wav_header

    yield wav_header(rate)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            yield chunk.pcm


async def _pcm(chunks: AsyncGenerator[SpeechChunk, None]) -> AsyncIterator[bytes]:
    from mongars_edge.speech.audio import float_to_pcm16, pcm16_to_float, resample

    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            yield float_to_pcm16(resample(pcm16_to_float(chunk.pcm), chunk.rate, PCM_RATE))


async def transcriptions(request: Request) -> Response:
    """Multipart upload (file, model, language, response_format) -> text."""
    await require_user(request)
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise InvalidRequestError("send the audio as multipart/form-data with a `file` field")
    async with request.form(max_files=1, max_fields=16) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadFieldError("file", "is required (an audio file)")
        data = await upload.read()
        fields: dict[str, Any] = {k: v for k, v in form.items() if k != "file"}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise BadFieldError(name, "must be a plain form field, not a file")
    form_fields = convert(fields, wire.TranscriptionForm)
    fmt = form_fields.response_format
    language = form_fields.language or None
    stt = _stt(request)
    result = await stt.transcribe_file(data, language)
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    reply = wire.Transcription(text=result.text)
    if fmt == "verbose_json":
        reply.task = "transcribe"
        reply.language = result.language
        reply.duration = round(result.duration_s, 3)
    return JsonReply(reply)


_BINARY: Final = {"type": "string", "contentMediaType": "application/octet-stream"}
_SPEECH_HEADERS: Final = {
    "X-Voice": "The voice that spoke",
    "X-Language": "Its language (en, fr)",
    "X-Sample-Rate": "Samples per second of the audio",
}


def routes() -> list[BaseRoute]:
    """The speech routes (create_app includes them)."""
    return [
        ApiRoute(
            "/v1/audio/speech",
            speech,
            {
                "POST": Op(
                    "Text to speech (OpenAI shape): audio streamed sentence by sentence; "
                    "503 while the `speech` setting is off",
                    body=wire.SpeechRequest,
                    content={
                        "audio/wav": _BINARY,
                        "audio/pcm": {**_BINARY, "description": "16-bit LE mono at 24 kHz"},
                    },
                    headers=_SPEECH_HEADERS,
                )
            },
        ),
        ApiRoute(
            "/v1/audio/transcriptions",
            transcriptions,
            {
                "POST": Op(
                    "Speech to text (OpenAI shape, multipart upload); "
                    "503 while the `stt` setting is off",
                    body=wire.TranscriptionForm,
                    form_files=("file",),
                    content={JSON: wire.Transcription, "text/plain": {"type": "string"}},
                )
            },
        ),
        ApiRoute(
            "/api/speech",
            status,
            {"GET": Op("Which voice features this box offers", ok=wire.SpeechStatus)},
        ),
    ]
