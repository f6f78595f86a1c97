"""Opening and closing the speech services, as the settings and the hardware profile decide.

`open_speech` returns what it opened (a `Speech`); the Runtime stores it: nothing here reaches
into the Runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from mongars_edge.errors import MongarsError, UnavailableError

if TYPE_CHECKING:
    from mongars_edge.chat.pipeline import ChatPipeline
    from mongars_edge.datadir import DataDir
    from mongars_edge.hardware.probe import HardwareFacts
    from mongars_edge.hardware.tuning import TuningProfile
    from mongars_edge.inference.manager import ModelManager
    from mongars_edge.settings import Settings
    from mongars_edge.speech.agent import VoiceAgent
    from mongars_edge.speech.stt import SpeechToText
    from mongars_edge.speech.tts import TextToSpeech
    from mongars_edge.speech.wyoming import WyomingServer

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Speech:
    """The speech services that opened (None: off, not installed or broken) and what went
    wrong on the way (for /health)."""

    tts: TextToSpeech | None = None
    stt: SpeechToText | None = None
    wyoming: WyomingServer | None = None
    problems: list[str] = field(default_factory=list)


def wanted(setting: str, profile_says: bool) -> bool:
    """auto follows the hardware profile; on and off are orders."""
    return profile_says if setting == "auto" else setting == "on"


def stt_model_for(settings: Settings, profile: TuningProfile) -> str:
    """The `stt_model` setting, with auto resolved by the hardware profile."""
    return profile.stt_model if settings.stt_model == "auto" else settings.stt_model


async def _load_tts(data: DataDir, profile: TuningProfile, cpus: int) -> TextToSpeech:
    from mongars_edge.speech.tts import TextToSpeech

    threads = max(1, min(2, cpus))
    return await asyncio.to_thread(TextToSpeech.load, data.voices, profile.onnx_providers, threads)


async def _load_stt(
    name: str, data: DataDir, cpus: int, models: ModelManager | None
) -> SpeechToText:
    """The chosen Whisper model; a catalog model not downloaded yet is pulled in the
    background while the bundled English one hears (then the chosen one takes over)."""
    from mongars_edge.speech.stt import DEFAULT_MODEL, SpeechToText

    threads = max(1, min(4, cpus))
    data_dir = data.root
    try:
        return await asyncio.to_thread(SpeechToText.load, name, threads, data_dir=data_dir)
    except UnavailableError as exc:
        pullable = models is not None and name in models.store.catalog and name != DEFAULT_MODEL
        if not pullable or models is None:
            raise
        log.warning("%s; %s hears meanwhile", exc, DEFAULT_MODEL)
    stt = await asyncio.to_thread(SpeechToText.load, DEFAULT_MODEL, threads, data_dir=data_dir)

    async def switch() -> None:
        await stt.switch(name, threads, data_dir=data_dir)

    models.pull(
        name,
        then=switch,
        because=f"speech-to-text hears English only ({DEFAULT_MODEL}) until {name} is installed",
    )
    return stt


async def _maybe(
    name: str, setting: str, loader: asyncio.Future[T] | None, problems: list[str]
) -> T | None:
    if loader is None:
        return None
    try:
        return await loader
    except (ImportError, MongarsError, OSError, RuntimeError) as exc:
        if setting == "on":
            raise UnavailableError(f"{name} is on but cannot start: {exc}") from None
        log.warning("%s is off: %s", name, exc)
        if not isinstance(exc, ImportError):  # not installed is a choice; broken is a problem
            problems.append(f"{name} cannot start: {exc}")
        return None


@contextlib.asynccontextmanager
async def open_speech(
    settings: Settings,
    profile: TuningProfile,
    facts: HardwareFacts,
    data: DataDir,
    models: ModelManager | None,
    agent: VoiceAgent | None = None,
) -> AsyncIterator[Speech]:
    """Load TTS and STT side by side, start the Wyoming server (for them and the conversation
    agent, which needs no speech); close all in reverse."""
    speech = Speech()
    want_tts = wanted(settings.speech, profile.speech)
    want_stt = wanted(settings.stt, profile.stt)
    cpus = facts.cpu_count
    stt_name = stt_model_for(settings, profile)
    tts_job = asyncio.ensure_future(_load_tts(data, profile, cpus)) if want_tts else None
    stt_job = asyncio.ensure_future(_load_stt(stt_name, data, cpus, models)) if want_stt else None
    try:
        speech.tts = await _maybe("text-to-speech", settings.speech, tts_job, speech.problems)
        speech.stt = await _maybe("speech-to-text", settings.stt, stt_job, speech.problems)
    except BaseException:
        for job in (tts_job, stt_job):
            if job is not None:
                job.cancel()
        raise
    async with contextlib.AsyncExitStack() as stack:
        if speech.tts is not None:
            stack.push_async_callback(speech.tts.aclose)
        if speech.stt is not None:
            stack.push_async_callback(speech.stt.aclose)
        if settings.wyoming_port and (speech.tts or speech.stt or agent):
            from mongars_edge.speech.wyoming import open_wyoming

            try:
                speech.wyoming = await stack.enter_async_context(
                    open_wyoming(
                        speech.tts, speech.stt, settings.host, settings.wyoming_port, agent
                    )
                )
            except MongarsError as exc:
                # Chat and the web page still work; /health shows what is missing.
                log.warning("%s", exc)
                speech.problems.append(str(exc))
            if speech.wyoming is not None and not _loopback_only(settings.host):
                from mongars_edge.speech.advertise import advertise

                await stack.enter_async_context(advertise(settings.host, speech.wyoming.port))
        yield speech


def voice_agent(
    settings: Settings, chat: ChatPipeline, models: ModelManager | None
) -> VoiceAgent | None:
    """The conversation agent, when it is on and the box has a chat model to answer with."""
    if not settings.wyoming_agent or models is None:
        return None
    from mongars_edge.speech.agent import VoiceAgent

    return VoiceAgent(chat, max_tokens=settings.reply_max_tokens)


def _loopback_only(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
