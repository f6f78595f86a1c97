"""Sentence splitting for streamed text, bounded chunking, and a cheap French/English guess."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

# A sentence ends at . ! ? … (possibly repeated, possibly followed by closing quotes or
# brackets) and then whitespace. Newlines between paragraphs also end one.
_END: Final = re.compile(r"(?:[.!?…]+(?:\s?[\"'»”’)\]])*\s+|\n\s*\n)")
# Abbreviations that end in a dot but do not end a sentence.
_ABBREV: Final = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "st",
        "jr",
        "sr",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "no",
        "fig",
        "approx",
        "m",
        "mme",
        "mlle",
        "p.ex",
        "a.m",
        "p.m",
        "av",
        "bd",
    ]
)
#: Longest piece handed to a voice at once; longer sentences are cut at a comma or space.
MAX_CHARS: Final = 400

_FR_WORDS: Final = frozenset(
    [
        "le",
        "la",
        "les",
        "un",
        "une",
        "des",
        "du",
        "de",
        "et",
        "est",
        "sont",
        "je",
        "tu",
        "il",
        "elle",
        "nous",
        "vous",
        "ils",
        "elles",
        "que",
        "qui",
        "pas",
        "ne",
        "avec",
        "pour",
        "dans",
        "sur",
        "au",
        "aux",
        "ce",
        "cette",
        "ces",
        "mon",
        "ma",
        "mes",
        "ton",
        "ta",
        "tes",
        "son",
        "sa",
        "ses",
        "leur",
        "bonjour",
        "merci",
        "oui",
        "non",
        "très",
        "bien",
        "c'est",
        "j'ai",
        "suis",
        "êtes",
        "avez",
        "être",
        "avoir",
        "fait",
        "aussi",
        "mais",
        "ou",
        "donc",
        "car",
        "où",
        "quand",
        "comment",
        "pourquoi",
        "voici",
        "voilà",
        "alors",
        "puis",
        "chez",
    ]
)
_EN_WORDS: Final = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "is",
        "are",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "that",
        "which",
        "who",
        "not",
        "with",
        "for",
        "in",
        "on",
        "at",
        "this",
        "these",
        "my",
        "your",
        "his",
        "her",
        "their",
        "hello",
        "thanks",
        "yes",
        "no",
        "very",
        "well",
        "it's",
        "i'm",
        "am",
        "be",
        "have",
        "do",
        "does",
        "did",
        "also",
        "but",
        "or",
        "so",
        "because",
        "where",
        "when",
        "how",
        "why",
        "here",
        "there",
        "then",
    ]
)
_WORD: Final = re.compile(r"[a-zàâäçéèêëîïôöùûüÿœæ']+", re.IGNORECASE)


def _ends_with_abbrev(text: str) -> bool:
    match = re.search(r"([A-Za-zÀ-ÿ.]+)\.[\"'»”’)\]]*$", text.rstrip())
    if match is None:
        return False
    word = match.group(1).lower()
    # A single capital letter ("J. Smith") is an initial, not a sentence end.
    return word in _ABBREV or (len(word) == 1 and match.group(1).isupper())


class SentenceSplitter:
    """Feed streamed text; get back each sentence as soon as it is complete."""

    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self._buffer = ""
        self._max = max_chars

    def feed(self, text: str) -> list[str]:
        """Add text; return the sentences it completed (maybe none)."""
        self._buffer += text
        out: list[str] = []
        start = 0
        for match in _END.finditer(self._buffer):
            candidate = self._buffer[start : match.end()]
            if _ends_with_abbrev(candidate) and "\n" not in match.group(0):
                continue
            out.extend(_bounded(candidate, self._max))
            start = match.end()
        self._buffer = self._buffer[start:]
        # A sentence that never ends must not grow the buffer without bound.
        while len(self._buffer) > self._max * 2:
            head, self._buffer = _cut(self._buffer, self._max)
            out.extend(_bounded(head, self._max))
        return [s for s in out if _speakable(s)]

    def flush(self) -> list[str]:
        """Return whatever is left as the last sentence(s)."""
        rest, self._buffer = self._buffer, ""
        return [s for s in _bounded(rest, self._max) if _speakable(s)]


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> Iterator[str]:
    """Yield the sentences of *text*, each at most *max_chars* long, lazily."""
    splitter = SentenceSplitter(max_chars)
    step = 4096
    for i in range(0, len(text), step):
        yield from splitter.feed(text[i : i + step])
    yield from splitter.flush()


def _speakable(sentence: str) -> bool:
    return any(ch.isalnum() for ch in sentence)


def _bounded(sentence: str, limit: int) -> list[str]:
    sentence = " ".join(sentence.split())
    parts: list[str] = []
    while len(sentence) > limit:
        head, sentence = _cut(sentence, limit)
        parts.append(head.strip())
    if sentence.strip():
        parts.append(sentence.strip())
    return parts


def _cut(text: str, limit: int) -> tuple[str, str]:
    """Cut *text* before *limit* at the last comma/semicolon, else space, else hard."""
    window = text[:limit]
    for seps in (",;:", " "):
        pos = max(window.rfind(sep) for sep in seps)
        if pos > limit // 3:
            return text[: pos + 1], text[pos + 1 :]
    return text[:limit], text[limit:]


def guess_language(text: str) -> str:
    """'fr' or 'en' from common words and accents; English when unsure."""
    words = _WORD.findall(text[:2000].lower())
    fr = sum(1 for w in words if w in _FR_WORDS)
    en = sum(1 for w in words if w in _EN_WORDS)
    fr += sum(1 for ch in text[:2000] if ch in "àâçéèêëîïôùûœ")
    return "fr" if fr > en else "en"
