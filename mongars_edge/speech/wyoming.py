"""A Wyoming protocol server (Home Assistant's voice protocol): TTS, streaming TTS, ASR and a
conversation agent (speech/agent.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeTextFormat,
    SynthesizeVoice,
)

from mongars_edge import __version__
from mongars_edge.errors import MongarsError
from mongars_edge.speech.agent import not_handled_off
from mongars_edge.speech.audio import MAX_AUDIO_S, pcm_to_stt
from mongars_edge.speech.frames import FrameError, read_event
from mongars_edge.speech.stt import SpeechToText
from mongars_edge.speech.tts import SpeechStream, TextToSpeech

if TYPE_CHECKING:
    from mongars_edge.speech.agent import VoiceAgent

log = logging.getLogger(__name__)

#: Samples per audio-chunk event sent to clients (~46 ms at 22 kHz).
SAMPLES_PER_CHUNK: Final = 1024
_ATTRIBUTION: Final = Attribution(name="monGARS Edge", url="https://github.com/mongars")


def build_info(
    tts: TextToSpeech | None, stt: SpeechToText | None, agent: VoiceAgent | None = None
) -> Info:
    """What `describe` answers."""
    info = Info()
    if agent is not None:
        info.handle.append(agent.program(_ATTRIBUTION))
    if tts is not None:
        voices = [
            TtsVoice(
                name=v.name,
                attribution=_ATTRIBUTION,
                installed=True,
                description=v.description,
                version=None,
                languages=[v.locale],
            )
            for v in tts.voices()
        ]
        info.tts.append(
            TtsProgram(
                name="mongars-piper",
                attribution=_ATTRIBUTION,
                installed=True,
                description="Piper text-to-speech on monGARS Edge",
                version=__version__,
                voices=voices,
                supports_synthesize_streaming=True,
            )
        )
    if stt is not None:
        model = AsrModel(
            name=stt.name,
            attribution=_ATTRIBUTION,
            installed=True,
            description=f"faster-whisper {stt.name}",
            version=None,
            languages=stt.languages(),
        )
        info.asr.append(
            AsrProgram(
                name="mongars-whisper",
                attribution=_ATTRIBUTION,
                installed=True,
                description="faster-whisper speech-to-text on monGARS Edge",
                version=__version__,
                models=[model],
            )
        )
    return info


def _strip_ssml(text: str) -> str:
    """Speak the words of SSML; the markup itself is not supported (nor read out)."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]*>", " ", text))


class _Handler(AsyncEventHandler):
    """One client connection."""

    def __init__(
        self,
        tts: TextToSpeech | None,
        stt: SpeechToText | None,
        agent: VoiceAgent | None,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(reader, writer)
        self._tts = tts
        self._stt = stt
        self._agent = agent
        self._stream: SpeechStream | None = None
        self._pump: asyncio.Task[int | None] | None = None
        self._language: str | None = None
        self._audio: bytearray | None = None
        self._format = (16_000, 2, 1)

    async def run(self) -> None:
        """Like the package's loop, with our bounded frame reader."""
        try:
            while True:
                try:
                    event = await read_event(self.reader)
                except (FrameError, ValueError) as exc:
                    # Framing is lost (bad JSON, a length we refuse): say why, then hang up.
                    text = f"unreadable Wyoming frame ({exc}); closing the connection"
                    await self.write_event(Error(text=text, code="bad_frame").event())
                    raise
                if event is None or not await self.handle_event(event):
                    break
        finally:
            await self.disconnect()
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        try:
            return await self._dispatch(event)
        except MongarsError as exc:
            await self.write_event(Error(text=str(exc), code=exc.kind).event())
            return True
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # Well framed but not what the event type needs (e.g. a synthesize without text).
            log.debug("malformed wyoming event %s: %r", event.type, exc)
            text = f"malformed {event.type} event: {type(exc).__name__}"
            await self.write_event(Error(text=text, code="bad_event").event())
            return True

    async def _dispatch(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(build_info(self._tts, self._stt, self._agent).event())
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=Ping.from_event(event).text).event())
        elif SynthesizeStart.is_type(event.type):
            await self._start_stream(SynthesizeStart.from_event(event).voice)
        elif SynthesizeChunk.is_type(event.type):
            if self._stream is not None:
                self._stream.feed(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type):
            await self._stop_stream()
        elif Synthesize.is_type(event.type):
            # Streaming clients also send the whole text for older servers: ignore it then.
            if self._stream is None:
                request = Synthesize.from_event(event)
                if request.text_format == SynthesizeTextFormat.SSML:
                    request.text = _strip_ssml(request.text)
                await self._synthesize(request)
        elif Transcribe.is_type(event.type):
            self._language = Transcribe.from_event(event).language
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            self._format = (start.rate, start.width, start.channels)
            self._audio = bytearray()
        elif AudioChunk.is_type(event.type):
            self._add_audio(AudioChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._transcribe()
        elif Transcript.is_type(event.type):
            if self._agent is None:
                await self.write_event(not_handled_off(event))
            else:
                await self._agent.handle(event, self.write_event)
        else:
            text = f"unknown event type {event.type[:64]!r}"
            await self.write_event(Error(text=text, code="unknown_event").event())
        return True

    def _tts_or_fail(self) -> TextToSpeech:
        if self._tts is None:
            raise MongarsError("text-to-speech is off on this box")
        return self._tts

    @staticmethod
    def _voice(voice: SynthesizeVoice | None) -> tuple[str | None, str | None]:
        if voice is None:
            return None, None
        return voice.name, voice.language

    async def _synthesize(self, request: Synthesize) -> None:
        tts = self._tts_or_fail()
        tts.check_capacity()
        name, language = self._voice(request.voice)
        rate: int | None = None
        async with contextlib.aclosing(tts.stream(request.text, name, language)) as chunks:
            async for chunk in chunks:
                if rate is None:
                    rate = chunk.rate
                    await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                await self._send_pcm(chunk.pcm, chunk.rate)
        if rate is not None:
            await self.write_event(AudioStop().event())

    async def _start_stream(self, voice: SynthesizeVoice | None) -> None:
        tts = self._tts_or_fail()
        tts.check_capacity()
        await self._cancel_stream()
        name, language = self._voice(voice)
        self._stream = tts.open_stream(name, language)
        self._pump = asyncio.create_task(self._pump_audio(self._stream), name="wyoming tts")

    async def _pump_audio(self, stream: SpeechStream) -> int | None:
        rate: int | None = None
        async with contextlib.aclosing(stream.chunks()) as chunks:
            async for chunk in chunks:
                if rate is None:
                    rate = chunk.rate
                    await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                await self._send_pcm(chunk.pcm, chunk.rate)
        return rate

    async def _stop_stream(self) -> None:
        stream, pump = self._stream, self._pump
        if stream is None or pump is None:
            return
        stream.close()
        try:
            rate = await pump
        finally:
            self._stream = self._pump = None
        if rate is None:  # nothing speakable: still a well-formed (empty) audio answer
            tts = self._tts_or_fail()
            await self.write_event(
                AudioStart(rate=tts.pick().sample_rate, width=2, channels=1).event()
            )
        await self.write_event(AudioStop().event())
        await self.write_event(SynthesizeStopped().event())

    async def _cancel_stream(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, MongarsError, ConnectionError):
                await self._pump
        self._stream = self._pump = None

    async def _send_pcm(self, pcm: bytes, rate: int) -> None:
        step = SAMPLES_PER_CHUNK * 2
        for i in range(0, len(pcm), step):
            chunk = AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i : i + step])
            await self.write_event(chunk.event())

    def _add_audio(self, chunk: AudioChunk) -> None:
        if self._audio is None:  # audio without audio-start: take the chunk's format
            self._audio = bytearray()
            self._format = (chunk.rate, chunk.width, chunk.channels)
        rate, width, channels = self._format
        limit = int(MAX_AUDIO_S * rate * width * channels)
        if len(self._audio) + len(chunk.audio) > limit:
            self._audio = None
            raise MongarsError(f"the audio is longer than {MAX_AUDIO_S:.0f} s")
        self._audio += chunk.audio

    async def _transcribe(self) -> None:
        audio, self._audio = self._audio, None
        language, self._language = self._language, None
        if self._stt is None:
            raise MongarsError("speech-to-text is off on this box")
        if audio is None:
            audio = bytearray()
        rate, width, channels = self._format
        samples = await asyncio.to_thread(pcm_to_stt, bytes(audio), rate, width, channels)
        result = await self._stt.transcribe(samples, language)
        await self.write_event(Transcript(text=result.text, language=result.language).event())

    async def disconnect(self) -> None:
        await self._cancel_stream()


class WyomingServer:
    """The TCP listener; every connection gets its own handler task."""

    def __init__(
        self,
        tts: TextToSpeech | None,
        stt: SpeechToText | None,
        agent: VoiceAgent | None = None,
    ) -> None:
        self._tts = tts
        self._stt = stt
        self._agent = agent
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[_Handler] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._accept, host, port)
        except OSError as exc:
            raise MongarsError(
                f"cannot start the Wyoming server on {host}:{port}: {exc.strerror} "
                "(change wyoming_port, or 0 to disable it)"
            ) from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("wyoming server listening", extra={"host": host, "port": self.port})

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = _Handler(self._tts, self._stt, self._agent, reader, writer)
        self._handlers.add(handler)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await handler.run()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            # A client that hangs up or sends garbage loses its connection, nothing more.
            log.debug("wyoming client dropped: %s", exc)
        finally:
            self._handlers.discard(handler)
            if task is not None:
                self._tasks.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            await handler.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def open_wyoming(
    tts: TextToSpeech | None,
    stt: SpeechToText | None,
    host: str,
    port: int,
    agent: VoiceAgent | None = None,
) -> AsyncIterator[WyomingServer]:
    """Serve Wyoming on host:port (0 picks a free port) until the block exits."""
    server = WyomingServer(tts, stt, agent)
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()
