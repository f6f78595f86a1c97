"""Sentence splitting for streamed text, bounded chunking, and a cheap French/English guess."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

# A sentence ends at . ! ? … (possibly repeated, possibly followed by closing quotes or
# brackets, French style with a space before them) and then whitespace. A blank line too.
_END: Final = re.compile(r"(?:[.!?…]+(?:\s?[\"'»”’)\]])*\s+|\n\s*\n)")
# The same at the very end of the buffer: a streamed reply's sentence is complete when its
# final token arrives, not one token later when the next word's space shows up.
_END_AT_TAIL: Final = re.compile(r"[A-Za-zÀ-ÿ]{2,}[.!?…]+(?:\s?[\"'»”’)\]])*$")
_CLAUSE: Final = re.compile(r"[,;:—]\s+")
_ABBREV_WORDS: Final = (
    "mr mrs ms dr st jr sr vs etc e.g i.e no fig approx mme mlle p.ex a.m p.m av bd"
)
_ABBREV: Final = frozenset(_ABBREV_WORDS.split())
#: Longest piece handed to a voice at once; longer sentences are cut at a comma or space.
MAX_CHARS: Final = 400
#: A stream's first piece is spoken after this many words even if its sentence goes on:
#: the first audio should not wait for a long first sentence (see docs/speech.md).
FIRST_PIECE_WORDS: Final = 4

_FR_TEXT: Final = """le la les un une des du de et est sont je tu il elle nous vous ils elles
que qui pas ne avec pour dans sur au aux ce cette ces mon ma mes ton ta tes son sa ses leur
bonjour merci oui non très bien c'est j'ai suis êtes avez être avoir fait aussi mais ou donc
car où quand comment pourquoi voici voilà alors puis chez"""
_EN_TEXT: Final = """the a an and is are i you he she we they that which who not with for in on
at this these my your his her their hello thanks yes no very well it's i'm am be have do does
did also but or so because where when how why here there then"""
_FR_WORDS: Final = frozenset(_FR_TEXT.split())
_EN_WORDS: Final = frozenset(_EN_TEXT.split())
_WORD: Final = re.compile(r"[a-zàâäçéèêëîïôöùûüÿœæ']+", re.IGNORECASE)


def _ends_with_abbrev(text: str) -> bool:
    match = re.search(r"([A-Za-zÀ-ÿ.]+)\.(?:\s?[\"'»”’)\]])*$", text.rstrip())
    if match is None:
        return False
    word = match.group(1).lower()
    # A single capital letter ("J. Smith") is an initial, not a sentence end.
    return word in _ABBREV or (len(word) == 1 and match.group(1).isupper())


class SentenceSplitter:
    """Feed streamed text; get back each sentence as soon as it is complete.

    With *eager_first*, the first piece comes out early: at the first clause break, or after
    FIRST_PIECE_WORDS words, so speech can start while the first sentence is still arriving.
    """

    def __init__(self, max_chars: int = MAX_CHARS, *, eager_first: bool = False) -> None:
        self._buffer = ""
        self._max = max_chars
        self._eager = eager_first
        self._emitted = 0

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
        if (
            self._buffer
            and _END_AT_TAIL.search(self._buffer)
            and not _ends_with_abbrev(self._buffer)
        ):
            out.extend(_bounded(self._buffer, self._max))
            self._buffer = ""
        if self._eager and not out and not self._emitted:
            out.extend(self._first_piece())
        # A sentence that never ends must not grow the buffer without bound.
        while len(self._buffer) > self._max * 2:
            head, self._buffer = _cut(self._buffer, self._max)
            out.extend(_bounded(head, self._max))
        spoken = [s for s in out if _speakable(s)]
        self._emitted += len(spoken)
        return spoken

    def _first_piece(self) -> list[str]:
        clause = _CLAUSE.search(self._buffer)
        if clause is not None and len(self._buffer[: clause.start()].split()) >= 2:
            head, self._buffer = self._buffer[: clause.end()], self._buffer[clause.end() :]
            return [head.strip()]
        words = self._buffer.split()
        # The last word may still be growing; only complete words (followed by a space) count.
        complete = len(words) if self._buffer[-1:].isspace() else len(words) - 1
        if complete >= FIRST_PIECE_WORDS:
            cut = self._buffer.rstrip().rfind(" ") if complete == len(words) - 1 else None
            if cut is None:
                head, self._buffer = self._buffer, ""
            else:
                head, self._buffer = self._buffer[:cut], self._buffer[cut:]
            return [head.strip()]
        return []

    def flush(self) -> list[str]:
        """Return whatever is left as the last sentence(s)."""
        rest, self._buffer = self._buffer, ""
        spoken = [s for s in _bounded(rest, self._max) if _speakable(s)]
        self._emitted += len(spoken)
        return spoken


def split_sentences(text: str, max_chars: int = MAX_CHARS) -> Iterator[str]:
    """Yield the sentences of *text*, each at most *max_chars* long, lazily."""
    splitter = SentenceSplitter(max_chars)
    step, i = 4096, 0
    while i < len(text):
        # Cut the feed after whitespace so a chunk border never looks like a sentence end.
        end = i + step
        space = text.rfind(" ", i, end)
        if end < len(text) and space > i:
            end = space + 1
        yield from splitter.feed(text[i:end])
        i = end
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
