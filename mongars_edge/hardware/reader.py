"""Reads files under a sysroot and collects a warning per missing or garbled source."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("mongars_edge.hardware.probe")

_CMD_TIMEOUT_S = 2.0
# A service's PATH often lacks the sbin and vendor dirs where nvpmodel and vcgencmd live.
_CMD_PATH = os.pathsep.join(
    [os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/bin", "/opt/vc/bin"]
)


class SysrootReader:
    """Reads files under the sysroot and collects one warning per missing or garbled source."""

    def __init__(self, root: Path, *, quiet: bool = False) -> None:
        self.root = root
        self.live = _is_live(root)
        self.warnings: list[str] = []
        self._level = logging.DEBUG if quiet else logging.WARNING

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        log.log(self._level, "hardware probe: %s", message)

    def text(self, rel: str, *, required: bool = True) -> str | None:
        """Read a file as text; None when missing (warned if required) or unreadable (warned)."""
        try:
            data = self.path(rel).read_bytes()
        except FileNotFoundError:
            if required:
                self.warn(f"/{rel} is missing")
            return None
        except OSError as exc:  # a directory where a file belongs, EACCES, EAGAIN on sysfs
            self.warn(f"/{rel} is unreadable ({exc.strerror or type(exc).__name__})")
            return None
        return data.decode("utf-8", errors="replace")

    def run(self, argv: list[str]) -> str | None:
        """Run a command on the live system only; None when absent, failure becomes a warning."""
        if not self.live:
            return None
        exe = shutil.which(argv[0], path=_CMD_PATH)
        if exe is None:
            return None
        try:
            done = subprocess.run(
                [exe, *argv[1:]],
                capture_output=True,
                text=True,
                timeout=_CMD_TIMEOUT_S,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self.warn(f"`{' '.join(argv)}` failed ({type(exc).__name__})")
            return None
        return done.stdout


def _is_live(root: Path) -> bool:
    try:
        return root.resolve() == Path("/")
    except OSError:
        return False
