"""Speech shapes: OpenAI's /v1/audio/speech and /v1/audio/transcriptions, and /api/speech."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from mongars_edge.web.schemas.common import Body, Reply

_IGNORED = "Accepted and ignored."


class SpeechRequest(Body, kw_only=True):
    """POST /v1/audio/speech: the text is spoken sentence by sentence, streamed."""

    input: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=200_000,
            pattern=r"\S",
            description="The text to speak (not only spaces).",
        ),
    ]
    model: Annotated[
        str, Meta(description="Any name (tts-1, ...): the box speaks with its own voices.")
    ] = ""
    voice: Annotated[
        str,
        Meta(
            description="An installed voice (GET /api/speech lists them); OpenAI's names "
            "(alloy, ...), default and auto pick the voice for the text's language."
        ),
    ] = ""
    response_format: Literal["wav", "pcm"] = "wav"
    speed: Annotated[float, Meta(ge=0.25, le=4)] = 1.0
    instructions: Annotated[str, Meta(description=_IGNORED)] | None = None
    stream_format: Literal["audio"] | None = None
    language: Annotated[
        str,
        Meta(
            description="Extension: en, fr, fr-CA...; picks the voice when `voice` does not "
            "(guessed from the text when absent)."
        ),
    ] = ""


class TranscriptionForm(Body, kw_only=True):
    """POST /v1/audio/transcriptions (multipart/form-data), besides `file`: the audio (WAV,
    WebM/Opus, Ogg, MP3 or FLAC)."""

    model: Annotated[str, Meta(description="Any name (whisper-1, ...).")] = ""
    language: Annotated[str, Meta(description="en, fr, ...; detected when absent or auto.")] = ""
    response_format: Literal["json", "text", "verbose_json"] = "json"
    prompt: Annotated[str, Meta(description=_IGNORED)] = ""
    temperature: Annotated[float, Meta(ge=0, le=1, description=_IGNORED)] = 0.0


class Transcription(Reply, kw_only=True):
    """The text; with verbose_json also the task, language and duration (seconds)."""

    text: str
    task: Literal["transcribe"] | UnsetType = UNSET
    language: str | UnsetType = UNSET
    duration: float | UnsetType = UNSET


class VoiceInfo(Reply, kw_only=True):
    name: str
    language: str
    locale: str
    engine: str


class SpeechStatus(Reply, kw_only=True):
    """Which voice features this box offers (the chat page shows its buttons from this)."""

    tts: Annotated[bool, Meta(description="POST /v1/audio/speech is on")]
    stt: Annotated[bool, Meta(description="POST /v1/audio/transcriptions is on")]
    voices: list[VoiceInfo]
    stt_languages: list[str]
    wyoming_port: int | None
