from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from mongars_edge.errors import InvalidRequestError
from mongars_edge.speech.tts import PREFETCH, TextToSpeech
from mongars_edge.speech.voices import PiperVoice, default_english_model


def test_voices_joe_for_english_espeak_for_french(tts: TextToSpeech) -> None:
    infos = tts.voices()
    assert infos[0].name == "joe"
    assert infos[0].engine == "piper"
    assert tts.pick(text="Hello, how are you?").info.name == "joe"
    french = tts.pick(text="Bonjour, comment allez-vous ?")
    assert (french.info.language, french.info.engine) == ("fr", "espeak-ng")
    assert tts.pick(language="fr-CA").info.language == "fr"
    assert tts.pick(voice="alloy").info.name == "joe"  # OpenAI names map to the default


def test_unknown_voice_bad_speed_and_empty_text_are_clear_errors(tts: TextToSpeech) -> None:
    with pytest.raises(InvalidRequestError, match="unknown voice"):
        tts.pick(voice="nobody")
    with pytest.raises(InvalidRequestError, match="empty"):
        list(tts.iter_blocking("   "))
    with pytest.raises(InvalidRequestError, match="speed"):
        list(tts.iter_blocking("Hello.", speed=9))


def test_french_is_spoken_by_espeak(tts: TextToSpeech) -> None:
    chunks = list(tts.iter_blocking("Bonjour. Il fait beau aujourd'hui."))
    assert [c.voice for c in chunks] == ["espeak-fr", "espeak-fr"]
    assert all(len(c.pcm) > c.rate // 4 for c in chunks)  # > 1/8 s of audio each


async def test_stream_yields_one_chunk_per_sentence_in_order(tts: TextToSpeech) -> None:
    text = "The door is open. The cat is sleeping on the warm porch! Is it raining?"
    got = [chunk async for chunk in tts.stream(text)]
    assert [c.text for c in got] == [
        "The door is open.",
        "The cat is sleeping on the warm porch!",
        "Is it raining?",
    ]
    assert all(c.rate == 22050 and len(c.pcm) > 22050 // 2 for c in got)


async def test_100_kb_text_streams_with_bounded_work_and_stops_when_dropped(
    tts: TextToSpeech,
) -> None:
    text = "The garden needs water every evening in summer. " * 2100  # ~100 KB
    assert len(text) > 100_000
    seen = 0
    before = tts.synthesized
    async with contextlib.aclosing(tts.stream(text)) as chunks:
        async for chunk in chunks:
            assert chunk.pcm
            seen += 1
            # Never more than PREFETCH sentences synthesized ahead of the listener.
            assert tts.synthesized - before <= seen + PREFETCH
            if seen == 3:
                break
    # After the listener left, nothing more runs: one more sentence drains the worker.
    await tts.synthesize("Done.", tts.pick())
    assert tts.synthesized - before <= seen + PREFETCH + 1


async def test_speech_stream_speaks_before_the_text_is_finished(tts: TextToSpeech) -> None:
    stream = tts.open_stream()
    chunks = stream.chunks()
    for token in ["Good", "morning", "to", "you.", ""]:
        stream.feed(token + " ")
    first = await anext(chunks)  # stream not closed: the first sentence is already audio
    assert first.text == "Good morning to you."
    stream.feed("And the rest comes later")
    stream.close()
    rest = [c.text async for c in chunks]
    assert rest == ["And the rest comes later"]


async def test_barge_in_cancels_everything_not_yet_heard(tts: TextToSpeech) -> None:
    stream = tts.open_stream()
    chunks = stream.chunks()
    before = tts.synthesized
    stream.feed("One two three. Four five six. Seven eight nine. Ten eleven twelve. ")
    first = await anext(chunks)
    assert first.text == "One two three."
    stream.cancel()
    assert [c async for c in chunks] == []
    await tts.synthesize("Done.", tts.pick())
    # The first sentence, at most the one already running, and "Done.".
    assert tts.synthesized - before <= 3
    stream.feed("Ignored after cancel. ")
    assert stream.backlog() == 0


def test_jetson_providers_fall_back_to_cpu_where_there_is_no_gpu(tmp_path: Path) -> None:
    jetson = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    model = default_english_model()
    assert model is not None
    voice = PiperVoice(model, jetson, threads=1, cache_dir=tmp_path / "trt")
    assert voice.providers == ("CPUExecutionProvider",)
    assert len(voice.synthesize("Hello.", 1.0)) > 2000
