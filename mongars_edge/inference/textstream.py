"""Token bytes -> text pieces: whole UTF-8 characters only, and stop strings held back."""

from __future__ import annotations


class TextStream:
    """Turns token pieces into safe-to-emit text and detects stop strings."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = stop
        self._hold = max((len(s) for s in stop), default=0)
        self._bytes = b""
        self._pending = ""  # decoded but held back: might be the start of a stop string
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be emitted now."""
        self._bytes += piece
        text = self._decode_complete()
        if not text and not self._stop:
            return ""
        self._pending += text
        if not self._stop:
            out, self._pending = self._pending, ""
            return out
        for stop in self._stop:
            at = self._pending.find(stop)
            if at >= 0:
                self.stopped = True
                out = self._pending[:at]
                self._pending = ""
                return out
        # Keep the longest tail that is a prefix of some stop string.
        keep = 0
        for n in range(min(self._hold - 1, len(self._pending)), 0, -1):
            tail = self._pending[-n:]
            if any(s.startswith(tail) for s in self._stop):
                keep = n
                break
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def flush(self) -> str:
        """The text still held back when the stream ends without a stop string."""
        rest = self._pending + self._bytes.decode("utf-8", errors="replace")
        self._pending, self._bytes = "", b""
        return rest

    def _decode_complete(self) -> str:
        data = self._bytes
        # A UTF-8 character is at most 4 bytes: only the last 3 can be an unfinished one.
        for cut in range(len(data), max(len(data) - 4, -1), -1):
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._bytes = data[cut:]
            return text
        # Not valid UTF-8 at all: replace rather than hold forever.
        self._bytes = b""
        return data.decode("utf-8", errors="replace")
