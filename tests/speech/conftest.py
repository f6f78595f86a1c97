"""Speech fixtures: the real voices and the real Whisper model, loaded once per session; the
web tests' real Runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mongars_edge.speech.stt import SpeechToText
from mongars_edge.speech.tts import TextToSpeech
from tests.web.conftest import runtime

__all__ = ["runtime", "stt", "tts"]


@pytest.fixture(scope="session")
def tts() -> Iterator[TextToSpeech]:
    engine = TextToSpeech.load(None)
    yield engine
    engine._executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def stt() -> Iterator[SpeechToText]:
    model = SpeechToText.load(threads=2)
    yield model
    model._executor.shutdown(wait=True, cancel_futures=True)
