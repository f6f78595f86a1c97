from __future__ import annotations

import asyncio
import io
import wave

import av
import numpy as np
import pytest

from mongars_edge.errors import InvalidRequestError
from mongars_edge.speech.audio import (
    AudioFormatError,
    decode_audio,
    float_to_pcm16,
    pcm16_to_float,
    resample,
    wav_bytes,
)
from mongars_edge.speech.errors import SpeechBusyError
from mongars_edge.speech.stt import MAX_QUEUED, SpeechToText
from mongars_edge.speech.tts import TextToSpeech
from tests.support.speech import wer

TEXT = "Please turn on the lights in the kitchen."


@pytest.fixture(scope="module")
def spoken(tts: TextToSpeech) -> tuple[bytes, int]:
    chunks = list(tts.iter_blocking(TEXT))
    return b"".join(c.pcm for c in chunks), chunks[0].rate


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (44100, 2), (11025, 1), (48000, 1)])
async def test_odd_rates_and_stereo_wav_are_resampled(
    stt: SpeechToText, spoken: tuple[bytes, int], rate: int, channels: int
) -> None:
    pcm, src = spoken
    samples = resample(pcm16_to_float(pcm), src, rate)
    if channels == 2:
        samples = np.repeat(samples, 2)
    data = wav_bytes(float_to_pcm16(samples), rate, channels)
    result = await stt.transcribe_file(data)
    assert wer(TEXT, result.text) <= 0.25, result.text
    assert result.language == "en"


async def test_ogg_opus_like_a_browser_sends(stt: SpeechToText, spoken: tuple[bytes, int]) -> None:
    pcm, rate = spoken
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(float_to_pcm16(resample(pcm16_to_float(pcm), rate, 48000)), "<i2")
            .reshape(1, -1)
            .copy(),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    result = await stt.transcribe_file(out.getvalue())
    assert wer(TEXT, result.text) <= 0.25, result.text


async def test_silence_gives_an_empty_transcript(stt: SpeechToText) -> None:
    digital = wav_bytes(b"\x00\x00" * 16000 * 2, 16000)
    assert (await stt.transcribe_file(digital)).text == ""
    rng = np.random.default_rng(7)
    hiss = (rng.standard_normal(16000 * 3) * 0.003).astype(np.float32)
    result = await stt.transcribe_file(wav_bytes(float_to_pcm16(hiss), 16000))
    assert len(result.text.split()) <= 2  # VAD drops it; a stray word at most


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not audio at all" * 10,
        b"RIFF\x10\x00\x00\x00WAVEfmt garbage",
        bytes(range(256)) * 40,
    ],
)
async def test_corrupt_or_empty_audio_is_a_clear_error(stt: SpeechToText, data: bytes) -> None:
    with pytest.raises(AudioFormatError):
        await stt.transcribe_file(data)


def test_truncated_wav_still_decodes_what_is_there(spoken: tuple[bytes, int]) -> None:
    pcm, rate = spoken
    data = wav_bytes(pcm, rate)
    samples = decode_audio(data[: len(data) // 2])
    assert samples.size > 0


def test_english_only_model_refuses_french_clearly(stt: SpeechToText) -> None:
    with pytest.raises(InvalidRequestError, match="English only"):
        stt.transcribe_blocking(np.zeros(16000, np.float32), "fr")


def test_8bit_wav_goes_through_pyav() -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes([128]) * 8000)
    samples = decode_audio(out.getvalue())
    assert samples.size == 16000


async def test_a_flood_of_requests_gets_busy_errors_not_an_endless_queue(
    stt: SpeechToText,
) -> None:
    quiet = np.zeros(16000, np.float32)
    results = await asyncio.gather(
        *(stt.transcribe(quiet) for _ in range(MAX_QUEUED + 4)), return_exceptions=True
    )
    busy = [r for r in results if isinstance(r, SpeechBusyError)]
    assert len(busy) == 4
    assert busy[0].http_status == 429
    assert all(r.text == "" for r in results if not isinstance(r, BaseException))
    assert (await stt.transcribe(quiet)).text == ""  # and the queue drains
