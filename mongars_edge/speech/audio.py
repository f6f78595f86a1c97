"""Audio bytes in and out: WAV encode/decode, any container through PyAV, resampling."""

from __future__ import annotations

import io
import wave
from typing import Final

import numpy as np
import numpy.typing as npt

from mongars_edge.errors import InvalidRequestError

#: Whisper's input rate.
STT_RATE: Final = 16_000
#: Longest audio accepted for transcription (seconds); longer is a clear error, not an OOM.
MAX_AUDIO_S: Final = 600.0

Float32 = npt.NDArray[np.float32]


class AudioFormatError(InvalidRequestError):
    """The audio cannot be read: empty, corrupt, or in a format we do not decode."""

    kind = "invalid_audio"


def wav_bytes(pcm: bytes, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """Wrap 16-bit PCM in a WAV container."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


def wav_header(rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A WAV header with an unknown (maximal) length, for streaming responses."""
    header = bytearray(wav_bytes(b"", rate, channels, width))
    # RIFF and data sizes set to the maximum: players read until the stream ends.
    header[4:8] = (0xFFFFFFFF).to_bytes(4, "little")
    header[40:44] = (0xFFFFFFFF - 36).to_bytes(4, "little")
    return bytes(header)


def pcm16_to_float(pcm: bytes) -> Float32:
    """Little-endian int16 PCM -> float32 in [-1, 1]."""
    if len(pcm) % 2:
        pcm = pcm[:-1]
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: Float32) -> bytes:
    """float32 in [-1, 1] -> little-endian int16 PCM."""
    clipped = np.clip(samples, -1.0, 1.0) * 32767.0
    return clipped.astype("<i2").tobytes()


def resample(samples: Float32, src_rate: int, dst_rate: int) -> Float32:
    """Linear-interpolation resampling; good enough for speech recognition."""
    if src_rate == dst_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    if src_rate <= 0:
        raise AudioFormatError(f"invalid sample rate {src_rate}")
    n_out = max(1, round(samples.size * dst_rate / src_rate))
    x_old = np.arange(samples.size, dtype=np.float64) / src_rate
    x_new = np.arange(n_out, dtype=np.float64) / dst_rate
    return np.interp(x_new, x_old, samples).astype(np.float32)


def pcm_to_stt(pcm: bytes, rate: int, width: int = 2, channels: int = 1) -> Float32:
    """Raw PCM (as Wyoming sends it) -> mono float32 at 16 kHz."""
    if width != 2:
        raise AudioFormatError(f"only 16-bit PCM is supported, got {width * 8}-bit")
    samples = pcm16_to_float(pcm)
    if channels > 1:
        usable = samples.size - samples.size % channels
        samples = samples[:usable].reshape(-1, channels).mean(axis=1).astype(np.float32)
    return resample(samples, rate, STT_RATE)


def decode_audio(data: bytes) -> Float32:
    """Any audio file (WAV, WebM/Opus, Ogg, MP3, FLAC...) -> mono float32 at 16 kHz."""
    if not data:
        raise AudioFormatError("the audio is empty")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            return _decode_wav(data)
        except (wave.Error, EOFError, ValueError, RuntimeError):  # wave raises all of these
            pass  # e.g. float WAV; PyAV reads those
    return _decode_av(data)


def _decode_wav(data: bytes) -> Float32:
    with wave.open(io.BytesIO(data), "rb") as wav:
        rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
        if width != 2 or channels < 1:
            raise ValueError("not 16-bit PCM")
        _check_length(wav.getnframes() / max(rate, 1))
        pcm = wav.readframes(wav.getnframes())
    return pcm_to_stt(pcm, rate, width, channels)


def _decode_av(data: bytes) -> Float32:
    from faster_whisper.audio import decode_audio as fw_decode  # PyAV: slow import, so late

    try:
        samples = fw_decode(io.BytesIO(data), sampling_rate=STT_RATE)
    except Exception as exc:  # untrusted bytes: PyAV raises many kinds (FFmpegError, Runtime...)
        raise AudioFormatError(
            f"cannot decode the audio (send WAV, WebM/Opus, Ogg, MP3 or FLAC): {type(exc).__name__}"
        ) from None
    if not isinstance(samples, np.ndarray) or samples.size == 0:
        raise AudioFormatError("the audio holds no samples")
    _check_length(samples.size / STT_RATE)
    return samples.astype(np.float32, copy=False)


def _check_length(seconds: float) -> None:
    if seconds > MAX_AUDIO_S:
        raise AudioFormatError(
            f"the audio is {seconds:.0f} s long; at most {MAX_AUDIO_S:.0f} s is accepted"
        )
