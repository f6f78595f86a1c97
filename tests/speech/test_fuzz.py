"""Property tests: the pure parts never fail in unplanned ways, whatever they are given."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mongars_edge.speech.audio import AudioFormatError, decode_audio
from mongars_edge.speech.frames import FrameError, read_event
from mongars_edge.speech.sentences import MAX_CHARS, SentenceSplitter, split_sentences


@given(st.text(max_size=3000), st.integers(min_value=1, max_value=50))
def test_splitting_keeps_every_word_and_bounds_every_piece(text: str, step: int) -> None:
    splitter = SentenceSplitter(eager_first=True)
    pieces: list[str] = []
    for i in range(0, len(text), step):
        pieces += splitter.feed(text[i : i + step])
    pieces += splitter.flush()
    assert all(0 < len(p) <= MAX_CHARS for p in pieces)
    spoken = "".join("".join(pieces).split())
    # Every speakable character survives, in order (only whitespace is reflowed, and pieces
    # without a letter or digit are dropped).
    letters = [ch for ch in text if ch.isalnum()]
    assert [ch for ch in spoken if ch.isalnum()] == letters
    assert list(split_sentences(text)) == list(split_sentences(text))


@settings(max_examples=200)
@given(st.binary(max_size=2048))
def test_decoding_garbage_is_an_audio_error_or_audio(data: bytes) -> None:
    try:
        samples = decode_audio(data)
    except AudioFormatError:
        return
    assert samples.ndim == 1


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda header, rest: json.dumps(header).encode() + b"\n" + rest,
            st.dictionaries(
                st.sampled_from(["type", "data", "data_length", "payload_length", "version"]),
                st.one_of(st.integers(-5, 10**10), st.text(max_size=8), st.none(), st.booleans()),
            ),
            st.binary(max_size=256),
        ),
    )
)
def test_wyoming_frames_parse_or_fail_cleanly(data: bytes) -> None:
    async def run() -> None:
        reader = asyncio.StreamReader(limit=1024)
        reader.feed_data(data)
        reader.feed_eof()
        try:
            while await read_event(reader) is not None:
                pass
        except (FrameError, ValueError, asyncio.IncompleteReadError):
            pass  # the server drops such a client (ValueError covers bad JSON and long lines)

    asyncio.run(run())
