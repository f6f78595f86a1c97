"""Opening and closing the speech services for the Runtime, as the settings decide."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from mongars_edge.errors import MongarsError, UnavailableError

if TYPE_CHECKING:
    from mongars_edge.hardware.tuning import TuningProfile
    from mongars_edge.runtime import Runtime
    from mongars_edge.settings import Settings
    from mongars_edge.speech.agent import VoiceAgent
    from mongars_edge.speech.stt import SpeechToText
    from mongars_edge.speech.tts import TextToSpeech

log = logging.getLogger(__name__)
T = TypeVar("T")


def wanted(setting: str, profile_says: bool) -> bool:
    """auto follows the hardware profile; on and off are orders."""
    return profile_says if setting == "auto" else setting == "on"


async def _load_tts(runtime: Runtime) -> TextToSpeech:
    from mongars_edge.speech.tts import TextToSpeech

    threads = max(1, min(2, runtime.facts.cpu_count))
    return await asyncio.to_thread(
        TextToSpeech.load, runtime.data_dir / "voices", runtime.profile.onnx_providers, threads
    )


def stt_model_for(settings: Settings, profile: TuningProfile) -> str:
    """The `stt_model` setting, with auto resolved by the hardware profile."""
    return profile.stt_model if settings.stt_model == "auto" else settings.stt_model


def stt_choice(runtime: Runtime) -> str:
    return stt_model_for(runtime.settings, runtime.profile)


async def _load_stt(runtime: Runtime) -> SpeechToText:
    """The chosen Whisper model; a catalog model not downloaded yet is pulled in the
    background while the bundled English one hears (then the chosen one takes over)."""
    from mongars_edge.speech.stt import DEFAULT_MODEL, SpeechToText

    threads = max(1, min(4, runtime.facts.cpu_count))
    name = stt_choice(runtime)
    data_dir = runtime.data_dir
    try:
        return await asyncio.to_thread(SpeechToText.load, name, threads, data_dir=data_dir)
    except UnavailableError as exc:
        models = runtime.models
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
    runtime: Runtime, name: str, setting: str, loader: asyncio.Future[T] | None
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
            runtime.problems.append(f"{name} cannot start: {exc}")
        return None


@contextlib.asynccontextmanager
async def open_speech(runtime: Runtime) -> AsyncIterator[None]:
    """Load TTS and STT side by side, start the Wyoming server (for them and the conversation
    agent, which needs no speech); close all in reverse."""
    settings, profile = runtime.settings, runtime.profile
    want_tts = wanted(settings.speech, profile.speech)
    want_stt = wanted(settings.stt, profile.stt)
    tts_job = asyncio.ensure_future(_load_tts(runtime)) if want_tts else None
    stt_job = asyncio.ensure_future(_load_stt(runtime)) if want_stt else None
    try:
        tts = await _maybe(runtime, "text-to-speech", settings.speech, tts_job)
        stt = await _maybe(runtime, "speech-to-text", settings.stt, stt_job)
    except BaseException:
        for job in (tts_job, stt_job):
            if job is not None:
                job.cancel()
        raise
    async with contextlib.AsyncExitStack() as stack:
        if tts is not None:
            runtime.speech = tts
            stack.push_async_callback(tts.aclose)
        if stt is not None:
            runtime.stt = stt
            stack.push_async_callback(stt.aclose)
        agent = _agent(runtime)
        if settings.wyoming_port and (runtime.speech or runtime.stt or agent):
            from mongars_edge.speech.wyoming import open_wyoming

            try:
                runtime.wyoming = await stack.enter_async_context(
                    open_wyoming(
                        runtime.speech, runtime.stt, settings.host, settings.wyoming_port, agent
                    )
                )
            except MongarsError as exc:
                # Chat and the web page still work; /health shows what is missing.
                log.warning("%s", exc)
                runtime.problems.append(str(exc))
            if runtime.wyoming is not None and not _loopback_only(settings.host):
                from mongars_edge.speech.advertise import advertise

                await stack.enter_async_context(advertise(runtime, runtime.wyoming.port))
        try:
            yield
        finally:
            runtime.wyoming = None
            runtime.speech = None
            runtime.stt = None


def _agent(runtime: Runtime) -> VoiceAgent | None:
    """The conversation agent, when it is on and the box has a chat model to answer with."""
    if not runtime.settings.wyoming_agent or runtime.models is None:
        return None
    from mongars_edge.speech.agent import VoiceAgent

    return VoiceAgent(runtime.chat, max_tokens=runtime.settings.reply_max_tokens)


def _loopback_only(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
