"""TextStream: UTF-8 split across tokens and stop strings split across tokens."""

from __future__ import annotations

from mongars_edge.inference.textstream import TextStream


def test_multibyte_characters_wait_for_their_last_byte() -> None:
    t = TextStream(())
    data = "é😀".encode()
    out = [t.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "é😀"
    assert out[0] == ""  # half an é is never emitted


def test_stop_string_across_tokens_is_cut_and_never_emitted() -> None:
    t = TextStream(("###",))
    out = [t.push(p.encode()) for p in ["Hello #", "#", "# world"]]
    assert "".join(out) == "Hello "
    assert t.stopped


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    t = TextStream(("END",))
    assert t.push(b"the E") == "the "
    assert t.push(b"ND") == ""
    assert t.stopped
    t2 = TextStream(("END",))
    assert t2.push(b"the E") == "the "
    assert t2.push(b"very") == "Every"
    assert t2.push(b" E") == " "
    assert t2.flush() == "E"
