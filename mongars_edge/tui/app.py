"""MongarsApp: the Textual TUI; one mode per screen, a health poll that drives reconnects."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.worker import Worker

from mongars_edge.datadir import DataDir
from mongars_edge.errors import MongarsError
from mongars_edge.localbox import ask_data_dir, local_url, same_place, serving_url
from mongars_edge.settings import Settings
from mongars_edge.tui.client import (
    DaemonClient,
    DaemonDown,
    DaemonError,
    LocalToken,
    LocalTokenError,
)
from mongars_edge.tui.screens.chat import ChatScreen
from mongars_edge.tui.screens.hardware import HardwareScreen
from mongars_edge.tui.screens.logs import LogsScreen
from mongars_edge.tui.screens.memories import MemoriesScreen
from mongars_edge.tui.screens.mesh import MeshScreen

log = logging.getLogger(__name__)

#: The daemon's data dir on the images (systemd/mongars-edge.service).
APPLIANCE_DATA_DIR = Path("/var/lib/mongars-edge")


class MongarsApp(App[None]):
    """Chat, memories, hardware, mesh and logs of one daemon, over its HTTP API."""

    CSS_PATH = "app.tcss"
    TITLE = "monGARS Edge"
    ENABLE_COMMAND_PALETTE = False
    MODES: ClassVar[dict[str, Any]] = {
        "chat": ChatScreen,
        "memories": MemoriesScreen,
        "hardware": HardwareScreen,
        "mesh": MeshScreen,
        "logs": LogsScreen,
    }
    DEFAULT_MODE = "chat"
    # Below 70 columns the conversation list hides; the chat keeps the width.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (70, "-wide")]  # noqa: RUF012
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "switch_mode('chat')", "Chat"),
        Binding("f2", "switch_mode('memories')", "Memory"),
        Binding("f3", "switch_mode('hardware')", "HW"),
        Binding("f4", "switch_mode('mesh')", "Mesh"),
        Binding("f5", "switch_mode('logs')", "Logs"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    #: connecting | up | down | restarted
    daemon_state: reactive[str] = reactive("connecting")
    daemon_detail: reactive[str] = reactive("")
    #: Bumped on every (re)connection; screens watch it to reload their data.
    generation: reactive[int] = reactive(0)

    def __init__(
        self, client: DaemonClient, *, poll_s: float = 2.0, max_tokens: int | None = None
    ) -> None:
        super().__init__()
        self.client = client
        self.poll_s = poll_s
        #: Longest answer asked for (None: the daemon's default).
        self.max_tokens = max_tokens
        self.health: dict[str, Any] = {}
        self.events: deque[str] = deque(maxlen=500)
        self._last_uptime: float | None = None
        self._health: Worker[None] | None = None

    def note(self, text: str) -> None:
        """Record something worth showing on the logs screen."""
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def on_mount(self) -> None:
        self.note(f"connecting to {self.client.url}")
        self.check_health()
        self.set_interval(self.poll_s, self.check_health)

    async def on_unmount(self) -> None:
        await self.client.aclose()

    def check_health(self) -> None:
        # A slow answer is never cancelled by the next tick: it is the answer that says so.
        if self._health is not None and self._health.is_running:
            return
        self._health = self.run_worker(self._check_health(), group="health", exit_on_error=False)

    async def _check_health(self) -> None:
        try:
            health = await self.client.health()
        except DaemonError as exc:
            if self.daemon_state != "down":
                self.note(f"daemon unreachable: {exc}")
            self.daemon_detail = str(exc)
            self.daemon_state = "down"
            return
        uptime = float(health.get("uptime_s") or 0.0)
        restarted = self._last_uptime is not None and uptime + 1.0 < self._last_uptime
        was = self.daemon_state
        self._last_uptime = uptime
        self.health = health
        if restarted or was != "up":
            if restarted:
                self.note("the daemon restarted")
            self.note(f"connected: {health.get('version', '?')} status {health.get('status')}")
            self.daemon_state = "up"  # before the detail: the banner hides, never shows it empty
            self.daemon_detail = ""
            self.generation += 1

    def report(self, exc: Exception, what: str) -> None:
        """Show a failed action to the user (no traceback), and maybe start reconnecting."""
        self.note(f"{what}: {exc}")
        self.notify(f"{what}: {exc}", severity="error", timeout=6)
        if isinstance(exc, DaemonDown):
            self.check_health()


class _EventLogHandler(logging.Handler):
    """Log records go to the logs screen while the TUI owns the terminal."""

    def __init__(self, app: MongarsApp) -> None:
        super().__init__(logging.WARNING)
        self.app = app

    def emit(self, record: logging.LogRecord) -> None:
        self.app.events.append(f"{record.levelname.lower()} {record.name}: {record.getMessage()}")


def _holds_box(data_dir: Path) -> bool:
    data = DataDir(data_dir)
    return data.local_admin_token.exists() or data.database.exists()


def find_daemon(settings: Settings, url: str | None) -> tuple[str, LocalToken]:
    """The local daemon's URL and its admin token, found as the CLI finds a box.

    The data dir is the one chosen (--data-dir, MONGARS_DATA_DIR, config) or, when none is,
    the one of the box answering on this machine (see `localbox`); the URL is the one that
    box serves that data dir on. Everything else stops the TUI before its screen opens, with
    one line saying what to pass (LocalTokenError, exit status 77).
    """
    data_dir = settings.resolved_data_dir()
    if url is not None:  # a URL without a token: fine if it is a box on this machine
        theirs = ask_data_dir(url)
        if theirs is None:
            raise LocalTokenError(
                f"no token for {url}: pass --token (on that box, `mongars-edge tokens create "
                "NAME` makes one), or run the TUI on that box without --url"
            )
        data_dir = theirs
    else:
        url = serving_url(data_dir)
        if url is None:
            url = local_url(settings.host, settings.port)
            theirs = ask_data_dir(url)
            if theirs is not None and settings.data_dir is None:
                data_dir = theirs  # no data dir chosen: the box running here is the one
            elif theirs is not None and not same_place(theirs, data_dir):
                raise LocalTokenError(
                    f"the box serving on {url} keeps its data (and token) in {theirs}, and no "
                    f"box serves {data_dir}: pass --data-dir {theirs}, or --url and --token"
                )
            if theirs is None:
                # The daemon is down (or restarting). On an appliance the SSH user is not
                # root, so an unset data_dir resolves under its own home: use the service's.
                unset = settings.data_dir is None
                if unset and not _holds_box(data_dir) and _holds_box(APPLIANCE_DATA_DIR):
                    data_dir = APPLIANCE_DATA_DIR
                if not _holds_box(data_dir):
                    raise LocalTokenError(
                        f"no box found: nothing answers on {url} and {data_dir} holds no box. "
                        "Start one (mongars-edge serve), or pass --data-dir DIR (the one `serve` "
                        "uses), or --url URL and --token TOKEN"
                    )
    token = LocalToken(data_dir)
    token.check()  # a permission problem is said before the screen opens
    return url, token


def run_tui(settings: Settings, *, url: str | None, token: str | None) -> None:
    """Open the TUI on this terminal against the daemon at *url* (default: this box)."""
    source: str | LocalToken | None = token
    if token is None:
        url, source = find_daemon(settings, url)
    elif url is None:
        url = serving_url(settings.resolved_data_dir()) or local_url(settings.host, settings.port)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise MongarsError(
            "the TUI needs a terminal; over SSH, connect with `ssh -t` (or without -T)"
        )
    app = MongarsApp(DaemonClient(url, source))
    root = logging.getLogger()
    # Nothing may write to the terminal behind Textual's back.
    saved = root.handlers[:]
    root.handlers = [_EventLogHandler(app)]
    try:
        app.run()
    finally:
        root.handlers = saved
