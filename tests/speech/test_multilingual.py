"""The multilingual Whisper base (the default speech-to-text model where the profile allows),
pulled from its PyPI wheels: the language is picked between French and English."""

from __future__ import annotations

from pathlib import Path

import pytest

from mongars_edge.speech.audio import pcm_to_stt
from mongars_edge.speech.stt import SpeechToText
from mongars_edge.speech.tts import TextToSpeech
from tests.support.models import pulled


@pytest.fixture(scope="module")
def whisper_base() -> Path:
    return pulled("whisper-base")


def test_french_and_english_are_told_apart(tts: TextToSpeech, whisper_base: Path) -> None:
    stt = SpeechToText.load(str(whisper_base), threads=2)
    try:
        assert stt.multilingual and stt.languages() == ["en", "fr"]
        # espeak-ng's French at its usual rate is too fast for Whisper base to follow (it heard
        # English words in it); at 0.7 it hears French, as a person speaking slowly would be.
        for text, language, speed, word in (
            ("Please turn on the kitchen lights.", "en", 1.0, "kitchen"),
            ("Bonjour, je voudrais réserver une table pour ce soir.", "fr", 0.7, "soir"),
        ):
            chunks = list(tts.iter_blocking(text, speed=speed))
            pcm = b"".join(c.pcm for c in chunks)
            result = stt.transcribe_blocking(pcm_to_stt(pcm, chunks[0].rate))
            assert result.language == language, result
            assert word in result.text.lower(), result
        english = stt.transcribe_blocking(
            pcm_to_stt(b"".join(c.pcm for c in tts.iter_blocking("Good morning.")), 22050), "en"
        )
        assert "morning" in english.text.lower()
    finally:
        stt._executor.shutdown(wait=True)
