"""Repeating trouble is logged once at warning, then at debug (STYLE habit 7)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Final

_DEFAULT_CAP: Final = 1024


class WarnOnce:
    """Remembers which troubles were told; at most `cap` of them (oldest forgotten first), so a
    peer inventing new keys cannot grow memory without bound."""

    def __init__(self, logger: logging.Logger, cap: int = _DEFAULT_CAP) -> None:
        self._log = logger
        self._cap = cap
        self._told: OrderedDict[str, None] = OrderedDict()

    def __call__(self, key: str, text: str, *args: object, trace: bool = False) -> bool:
        """Log `text % args`; True when it went out at warning (the first time for `key`).
        `trace`: the repeats at debug carry the traceback."""
        if key in self._told:
            self._told.move_to_end(key)
            self._log.debug(text, *args, exc_info=trace)
            return False
        self._told[key] = None
        while len(self._told) > self._cap:
            self._told.popitem(last=False)
        self._log.warning(text, *args)
        return True

    def forget(self, key: str) -> bool:
        """The trouble is over: tell it again at warning if it comes back. True if it was told."""
        return self._told.pop(key, 0) is None
