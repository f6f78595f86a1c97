from __future__ import annotations

from mongars_edge.speech.sentences import (
    MAX_CHARS,
    SentenceSplitter,
    guess_language,
    split_sentences,
)


def test_sentences_come_out_as_soon_as_they_end() -> None:
    splitter = SentenceSplitter()
    got: list[str] = []
    for token in ["Hello", "there.", "How", "are", "you", "today?", "I", "am", "fine"]:
        got += splitter.feed(token + " ")
    assert got == ["Hello there.", "How are you today?"]
    assert splitter.flush() == ["I am fine"]


def test_abbreviations_and_initials_do_not_end_a_sentence() -> None:
    text = "Dr. Smith met J. Doe at 5 p.m. yesterday. Then they left."
    assert list(split_sentences(text)) == [
        "Dr. Smith met J. Doe at 5 p.m. yesterday.",
        "Then they left.",
    ]


def test_french_punctuation_and_quotes() -> None:
    text = "Bonjour ! « Ça va ? » Oui… très bien.\n\nNouveau paragraphe"
    assert list(split_sentences(text)) == [
        "Bonjour !",
        "« Ça va ? »",
        "Oui…",
        "très bien.",
        "Nouveau paragraphe",
    ]


def test_nothing_speakable_is_dropped() -> None:
    assert list(split_sentences("... !!! ---")) == []
    assert list(split_sentences("")) == []


def test_a_sentence_that_never_ends_is_cut_and_the_buffer_stays_bounded() -> None:
    splitter = SentenceSplitter()
    out: list[str] = []
    for _ in range(5000):
        out += splitter.feed("word, ")
        assert len(splitter._buffer) <= 2 * MAX_CHARS + 6
    out += splitter.flush()
    assert all(len(s) <= MAX_CHARS for s in out)
    assert sum(s.count("word") for s in out) == 5000


def test_100_kb_splits_lazily_into_bounded_pieces() -> None:
    text = "This is a sentence about the garden. " * 2800  # ~100 KB
    pieces = split_sentences(text)
    first = next(pieces)
    assert first == "This is a sentence about the garden."
    assert all(len(p) <= MAX_CHARS for p in pieces)


def test_language_guess() -> None:
    assert guess_language("Bonjour, comment allez-vous aujourd'hui ?") == "fr"
    assert guess_language("Il fait beau et je suis content.") == "fr"
    assert guess_language("Hello, how are you today?") == "en"
    assert guess_language("") == "en"


def test_a_sentence_is_complete_with_its_last_token_not_one_later() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("The door is open") == []
    assert splitter.feed(".") == ["The door is open."]
    assert splitter.feed(" Is it") == []
    assert splitter.feed("?") == ["Is it?"]
    # Not at abbreviations, initials, decimals or one-letter pieces of "e.g.".
    for text in ("Ask Dr.", "Ask J.", "It costs 3.", "For e.", "For e.g."):
        assert SentenceSplitter().feed(text) == [], text


def test_eager_first_piece_at_a_clause_or_after_four_words() -> None:
    splitter = SentenceSplitter(eager_first=True)
    assert splitter.feed("Sure, ") == []  # one word: too short to speak alone
    splitter = SentenceSplitter(eager_first=True)
    assert splitter.feed("Of course, ") == ["Of course,"]
    assert splitter.feed("I can help with that. ") == ["I can help with that."]
    splitter = SentenceSplitter(eager_first=True)
    got: list[str] = []
    reply = "The capital of France is Paris and it is lovely."
    for token in reply.split():
        got += splitter.feed(token + " ")
    assert got == ["The capital of France", "is Paris and it is lovely."]
    # Only the first piece is eager.
    assert splitter.feed("Then more words come here without any end ") == []
