"""Wyoming framing: a JSON header line, optional data, optional payload, size-bounded.

Kept apart from the server so it can be fuzzed (tests/speech/test_fuzz.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

from wyoming.event import Event

# Frame limits: the wyoming package reads whatever length a client announces; a LAN client
# must not make the box allocate gigabytes. 1 MiB of PCM is 30 s at 16 kHz in one chunk.
MAX_DATA_BYTES: Final = 256 * 1024
MAX_PAYLOAD_BYTES: Final = 1024 * 1024


class FrameError(ValueError):
    """A client sent a frame we refuse to read; the connection is closed."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """One Wyoming event (JSON header line, optional data, optional payload), size-bounded."""
    line = await reader.readline()  # the stream limit bounds the header line
    if not line:
        return None
    header = json.loads(line)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise FrameError("a Wyoming header needs a type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise FrameError("Wyoming event data must be an object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    if data_length:
        extra = json.loads(await reader.readexactly(data_length))
        if not isinstance(extra, dict):
            raise FrameError("Wyoming event data must be an object")
        data.update(extra)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict[str, object], key: str, limit: int) -> int:
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise FrameError(f"{key} {value!r} is not a length from 0 to {limit}")
    return value
