"""Input checks shared by the store: text is stored as given or refused with a clear reason."""

from __future__ import annotations

import re
from typing import Final

from mongars_edge.errors import InvalidRequestError

# Larger than any turn a 4k-32k context can hold, small enough that one row cannot fill an SD card.
MAX_TEXT_CHARS: Final = 4 * 1024 * 1024
MAX_NAME_CHARS: Final = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str | bytes, what: str, *, allow_empty: bool = True) -> str:
    """Valid UTF-8 text: invalid bytes and lone surrogates become U+FFFD instead of crashing."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, str):
        raise InvalidRequestError(f"{what} must be text, not {type(value).__name__}")
    # A str can carry lone surrogates (surrogateescape decoding); SQLite cannot store them.
    value = _SURROGATE.sub("\ufffd", value)
    # NUL cuts strings short in some SQLite paths (FTS5 tokenizers, C APIs): drop it.
    value = value.replace("\x00", "")
    if not allow_empty and not value.strip():
        raise InvalidRequestError(f"{what} is empty")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidRequestError(
            f"{what} is {len(value)} characters; the limit is {MAX_TEXT_CHARS}"
        )
    return value


def clean_name(name: str) -> str:
    """A user name: 1-64 printable characters without surrounding spaces."""
    name = clean_text(name, "user name").strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidRequestError(
            f"a user name is 1 to {MAX_NAME_CHARS} printable characters; got {name[:80]!r}"
        )
    return name


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise InvalidRequestError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value
