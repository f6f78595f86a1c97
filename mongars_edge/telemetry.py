"""Telemetry: systemd readiness and watchdog (sd_notify), and the box's self-reported problems.

Prometheus metrics join this module later; the systemd part is `SystemdNotifier`, `Watchdog`
and `serve_with_notify`, the appliance health part is `appliance_problems`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Final, Protocol

from mongars_edge.datadir import DataDir
from mongars_edge.logonce import WarnOnce

log = logging.getLogger(__name__)

#: Below this much free space on the data dir's file system the box says it is nearly full.
LOW_DISK_BYTES: Final = 200 * 1024 * 1024


# --- sd_notify -----------------------------------------------------------------------------


class SystemdNotifier:
    """Datagram client for $NOTIFY_SOCKET (sd_notify(3)); a no-op outside systemd."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warn = WarnOnce(log)
        if address:
            if address.startswith("@"):  # abstract namespace socket
                address = "\0" + address[1:]
            elif not address.startswith("/"):
                log.warning("ignoring NOTIFY_SOCKET %r: only unix sockets are supported", address)
                self.address = None
                return
            self._target = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # A full receive queue must never stall the event loop: drop the datagram instead.
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` lines in one datagram; True when it was delivered."""
        if self._sock is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            self._sock.sendto(payload, self._target)
        except OSError as exc:
            self._warn("sd_notify", "sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds systemd expects between WATCHDOG=1 pings for this process, or None."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the variable was meant for a parent, not for us
    return int(usec) / 1_000_000


# --- watchdog ------------------------------------------------------------------------------


class Watchdog:
    """Pings systemd only while the event loop runs *and* the inference decoder makes progress.

    The ping task lives on the event loop, so a blocked loop stops the pings by itself. The
    inference worker thread calls `beat_inference()` after every decode step and
    `inference_idle()` when it has nothing to do; a decoder that is busy but has not stepped for
    `stall_s` seconds is wedged, and then the pings stop so systemd restarts the service.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        interval_s: float | None,
        *,
        stall_s: float | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        # A decode step on a Pi takes well under a second; give it the whole watchdog window.
        self.stall_s = stall_s if stall_s is not None else (interval_s or 30.0)
        self._lock = threading.Lock()
        self._busy = False
        self._last_beat = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._wedged_reported = False
        self.pings = 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Watchdog:
        return cls(SystemdNotifier.from_environ(environ), watchdog_interval(environ))

    # Called from the inference worker thread: cheap, no I/O, no loop access.
    def beat_inference(self) -> None:
        """One decode step finished; the decoder is alive and busy."""
        with self._lock:
            self._busy = True
            self._last_beat = time.monotonic()

    def inference_idle(self) -> None:
        """The decoder has no work; an idle decoder is never considered wedged."""
        with self._lock:
            self._busy = False
            self._last_beat = time.monotonic()

    def inference_stalled_s(self) -> float:
        """Seconds the busy decoder has gone without a step (0 when idle)."""
        with self._lock:
            if not self._busy:
                return 0.0
            return time.monotonic() - self._last_beat

    def healthy(self) -> bool:
        """False only while a busy decoder has gone `stall_s` without a step."""
        with self._lock:
            busy, last = self._busy, self._last_beat
        return not busy or time.monotonic() - last < self.stall_s

    def ping(self) -> bool:
        """Send one WATCHDOG=1 if the decoder is healthy; False when withheld."""
        if not self.healthy():
            if not self._wedged_reported:
                stalled = self.inference_stalled_s()
                log.error(
                    "inference decoder made no progress for %.0f s; withholding the watchdog "
                    "ping so systemd restarts the service",
                    stalled,
                )
                self.notifier.status(f"inference stalled for {stalled:.0f} s")
                self._wedged_reported = True
            return False
        if self._wedged_reported:
            self._wedged_reported = False
            self.notifier.status("inference progressing again")
        if self.notifier.notify("WATCHDOG=1"):
            self.pings += 1
        return True

    async def _run(self, period: float) -> None:
        while True:
            self.ping()
            await asyncio.sleep(period)

    def start(self) -> None:
        """Start the ping task when systemd asked for a watchdog; every start has a stop."""
        if self._task is not None or self.interval_s is None or not self.notifier.enabled:
            return
        # sd_watchdog_enabled(3) recommends pinging at half the interval; a little more often
        # keeps a slow Pi SD card write from costing a restart.
        period = max(0.05, self.interval_s / 3)
        self._task = asyncio.get_running_loop().create_task(self._run(period), name="watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @contextlib.asynccontextmanager
    async def widened(self, seconds: float) -> AsyncIterator[None]:
        """Give systemd a longer watchdog limit for a block, then the usual one back.

        For a start-up step that holds the GIL in long stretches (the embedding model's load:
        about a second on a Pi, but minutes under qemu's full-system emulation), during which
        the loop cannot ping. The limit goes back (with a ping) however the block ends.
        """
        if self.interval_s is None or not self.notifier.enabled:
            yield
            return
        self.notifier.notify(f"WATCHDOG_USEC={int(max(seconds, self.interval_s) * 1e6)}")
        try:
            yield
        finally:
            self.notifier.notify(f"WATCHDOG_USEC={int(self.interval_s * 1e6)}")
            self.ping()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Watchdog]:
        """Ping while the block runs; the notifier socket is closed on the way out."""
        self.start()
        try:
            yield self
        finally:
            await self.stop()
            self.notifier.close()


class _Server(Protocol):
    started: bool

    def serve(self) -> Awaitable[None]: ...


async def serve_with_notify(server: _Server, notifier: SystemdNotifier, status: str = "") -> None:
    """Run a uvicorn server; READY=1 once it listens, STOPPING=1 when it is done."""
    serving: asyncio.Task[None] = asyncio.ensure_future(server.serve())
    try:
        while not server.started and not serving.done():
            await asyncio.wait({serving}, timeout=0.05)
        if server.started:
            notifier.ready(status or "serving")
            log.info("ready; told systemd" if notifier.enabled else "ready")
        await serving
    finally:
        if not serving.done():
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        notifier.stopping("stopping")


# --- appliance problems shown on /health ---------------------------------------------------


def appliance_problems(data_dir: Path) -> list[str]:
    """Problems the appliance layer knows of: first-boot failures and a nearly full disk."""
    problems: list[str] = []
    report = DataDir(data_dir).firstboot_problems
    try:
        text = report.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        problems.append(f"first boot: cannot read {report}: {exc.strerror}")
        text = ""
    for line in text.splitlines():
        if line.strip():
            problems.append("first boot: " + line.strip()[:300])
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = None
    if free is not None and free < LOW_DISK_BYTES:
        problems.append(
            f"storage: only {free // (1024 * 1024)} MB free under {data_dir}; "
            "delete unused models (`mongars-edge models rm`) or use a larger card"
        )
    for problem in problems:
        log.warning("%s", problem)
    return problems
