"""The hardware screen: profile, live tokens/s, queue, temperature and throttling."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from rich.table import Table
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Sparkline, Static

from mongars_edge.tui.client import DaemonError, NotAvailable
from mongars_edge.tui.widgets import DaemonBanner

if TYPE_CHECKING:
    from mongars_edge.tui.app import MongarsApp

_HISTORY = 60
#: Facts (temperature, throttling) are re-read every this many ticks.
_FACTS_EVERY = 10
#: Profile keys shown under a clearer name: the profile's tier is the largest model tier the
#: box can run, not the tier of the model it runs (`models list` shows that one).
_PROFILE_LABELS = {"model_tier": "largest tier"}


def catalog_tier(model: object) -> str | None:
    """The tier the model catalog gives a model id (None for a GGUF path or an unknown id)."""
    from mongars_edge.errors import MongarsError
    from mongars_edge.inference.models import load_catalog

    try:
        entry = load_catalog().get(str(model))
    except (MongarsError, OSError, ValueError):
        return None
    return None if entry is None else str(entry.tier)


def local_temperature(root: Path = Path("/")) -> float | None:
    """The hottest thermal zone of this machine now, in °C (None when there is none)."""
    temps = []
    for zone in root.glob("sys/class/thermal/thermal_zone*/temp"):
        try:
            value = int(zone.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -40.0 <= value <= 150.0:  # disabled zones report sentinels
            temps.append(value)
    return max(temps) if temps else None


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


class HardwareScreen(Screen[None]):
    """How the box is doing right now."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+r", "refresh_now", "Refresh")]

    def __init__(self, refresh_s: float = 1.0) -> None:
        super().__init__()
        self.refresh_s = refresh_s
        self.rates: list[float] = []
        self._last_tokens: tuple[float, float] | None = None
        self.hardware: dict[str, Any] | None = None
        self.hardware_note = ""
        self._ticks = 0
        self.live_temp: float | None = None
        self.model_tier: str | None = None

    @property
    def mapp(self) -> MongarsApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield DaemonBanner(id="banner")
        with VerticalScroll(id="hardware-body"):
            yield Static("", id="live")
            yield Sparkline([], id="rate-spark", summary_function=max)
            yield Static("", id="profile")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self._tick)
        self.action_refresh_now()

    def _tick(self) -> None:
        if self.is_current:
            self._ticks += 1
            if self._ticks % _FACTS_EVERY == 0:
                self.hardware = None
            self.poll()

    def action_refresh_now(self) -> None:
        self.hardware = None
        self.poll()

    @work(group="hardware", exclusive=True, exit_on_error=False)
    async def poll(self) -> None:
        client = self.mapp.client
        metrics: dict[str, float] = {}
        metrics_note = ""
        try:
            metrics = await client.metrics()
        except NotAvailable:
            metrics_note = "/metrics is not available on this daemon"
        except DaemonError as exc:
            metrics_note = f"/metrics: {exc}"
        if self.hardware is None:
            try:
                body = await client.get_json("/api/hardware")
                self.hardware = body if isinstance(body, dict) else {}
                self.hardware_note = ""
            except NotAvailable:
                self.hardware_note = "/api/hardware is not available on this daemon"
            except DaemonError as exc:
                self.hardware_note = f"/api/hardware: {exc}"
            self.model_tier = await asyncio.to_thread(catalog_tier, self.mapp.health.get("model"))
        self.live_temp = None
        if _is_local(client.url):
            # On the box itself, read the sensors now: the daemon's facts date from its start.
            self.live_temp = await asyncio.to_thread(local_temperature)
        self._show(metrics, metrics_note)

    def _rate(self, metrics: dict[str, float]) -> float | None:
        gauge = metrics.get("mongars_generation_tokens_per_second")
        if gauge is not None:
            return gauge
        # An older daemon: derive the speed from the generated-tokens counter.
        total = metrics.get("mongars_generated_tokens_total")
        if total is None:
            return None
        now = time.monotonic()
        rate = None
        if self._last_tokens is not None and now > self._last_tokens[1]:
            rate = max(0.0, total - self._last_tokens[0]) / (now - self._last_tokens[1])
        self._last_tokens = (total, now)
        return rate

    def _show(self, metrics: dict[str, float], metrics_note: str) -> None:
        health = self.mapp.health
        hw = self.hardware or {}
        raw_facts = hw.get("facts")
        facts: dict[str, Any] = raw_facts if isinstance(raw_facts, dict) else {}
        rate = self._rate(metrics)
        if rate is not None:
            self.rates = [*self.rates, rate][-_HISTORY:]
            spark = self.query_one(Sparkline)
            spark.data = self.rates
            spark.display = True
        live = Table.grid(padding=(0, 2))
        live.add_column(style="bold")
        live.add_column()
        live.add_row("status", _fmt(health.get("status")))
        live.add_row("board", _fmt(health.get("board") or facts.get("board")))
        tier = f" ({self.model_tier} tier)" if self.model_tier and health.get("model") else ""
        live.add_row("model", _fmt(health.get("model")) + tier)
        live.add_row("uptime", _fmt(health.get("uptime_s"), " s"))
        live.add_row("tokens/s", _fmt(rate))
        queue = metrics.get("mongars_queue_depth")
        slots = metrics.get("mongars_parallel_slots")
        live.add_row("queue", _fmt(None if queue is None else int(queue)))
        active = metrics.get("mongars_active_sequences")
        in_use = None if active is None else f"{int(active)} of {_fmt(slots and int(slots))}"
        live.add_row("active", _fmt(in_use))
        if self.live_temp is not None:
            live.add_row("temperature", f"{self.live_temp:.1f} °C (now)")
        else:
            live.add_row("temperature", _fmt(facts.get("max_temp_c"), " °C"))
        throttled = facts.get("throttled")
        live.add_row(
            "throttling", _fmt("yes" if throttled is True else "no" if throttled is False else None)
        )
        for problem in health.get("problems") or []:
            live.add_row("problem", str(problem))
        for note in (metrics_note, self.hardware_note):
            if note:
                live.add_row("note", note)
        self.query_one("#live", Static).update(live)
        profile = hw.get("profile") if isinstance(hw.get("profile"), dict) else None
        if profile is None:
            profile = health.get("profile") if isinstance(health.get("profile"), dict) else {}
        table = Table(title="tuning profile", expand=True, show_edge=False)
        table.add_column("setting")
        table.add_column("value")
        for key, value in (profile or {}).items():
            if key != "reasons":
                table.add_row(_PROFILE_LABELS.get(str(key), str(key)), str(value))
        self.query_one("#profile", Static).update(table)
