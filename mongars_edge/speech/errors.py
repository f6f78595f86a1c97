"""Speech errors (the edges map them to HTTP, CLI and Wyoming)."""

from __future__ import annotations

from mongars_edge.errors import MongarsError


class SpeechBusyError(MongarsError):
    """Too much speech work is already queued; try again shortly."""

    http_status = 429
    kind = "speech_busy"

    def __init__(self, what: str, retry_after_s: float = 2.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"{what} is busy with other requests; try again in a moment")
