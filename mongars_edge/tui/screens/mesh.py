"""The mesh screen: peers, pairing state, load; pair and unpair."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from mongars_edge.tui.client import DaemonError, NotAvailable, items
from mongars_edge.tui.widgets import ConfirmScreen, DaemonBanner

if TYPE_CHECKING:
    from mongars_edge.tui.app import MongarsApp

NOT_AVAILABLE = "Mesh not available on this daemon (started with --no-mesh, or no mesh API)."


def _state(peer: dict[str, Any]) -> str:
    if "state" in peer:
        return str(peer["state"])
    words = ["paired" if peer.get("paired") else "not paired"]
    if peer.get("linked"):
        words.append("linked")
    return ", ".join(words)


def split_line(split: object) -> str:
    """Where a split model's layers live, from /health's `split` ("" when not split)."""
    if not isinstance(split, dict) or not isinstance(split.get("places"), list):
        return ""
    places = ", ".join(
        f"{p.get('layers')} layers "
        + ("here" if p.get("where") == "local" else f"on {p.get('where')}")
        for p in split["places"]
        if isinstance(p, dict)
    )
    line = f"{split.get('model', 'the model')} split: {places} ({split.get('state', '?')})"
    return f"{line}: {split['problem']}" if split.get("problem") else line


def _load(peer: dict[str, Any]) -> str:
    load = peer.get("load", peer.get("queue", peer.get("why")))
    if isinstance(load, dict):
        return ", ".join(f"{k}={v}" for k, v in load.items())
    return "—" if load is None else str(load)


class MeshScreen(Screen[None]):
    """Neighbouring boxes that share load and adapters."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+p", "pair", "Pair"),
        Binding("delete,ctrl+d", "unpair", "Unpair"),
        Binding("ctrl+r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.available: bool | None = None

    @property
    def mapp(self) -> MongarsApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield DaemonBanner(id="banner")
        yield Static("", id="mesh-status")
        yield DataTable(id="peers", cursor_type="row", zebra_stripes=True)
        yield Input(
            placeholder="Code shown by `pair` on a member [and its HOST:PORT] (Enter pairs)",
            id="pair-code",
        )
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in (("peer", "name"), ("address", "addr"), ("state", "state")):
            table.add_column(label, key=key)
        table.add_column("load", key="load")
        self.watch(self.mapp, "generation", self._on_connected, init=False)
        self.load()

    def _on_connected(self, _generation: int) -> None:
        self.load()

    def _status(self, text: str) -> None:
        split = split_line(self.mapp.health.get("split"))
        self.query_one("#mesh-status", Static).update(Text(f"{text}\n{split}" if split else text))

    def action_reload(self) -> None:
        self.load()

    def action_pair(self) -> None:
        self.query_one("#pair-code", Input).focus()

    @work(group="mesh", exclusive=True, exit_on_error=False)
    async def load(self) -> None:
        table = self.query_one(DataTable)
        try:
            body = await self.mapp.client.get_json("/api/peers")
        except NotAvailable:
            self.available = False
            table.clear()
            self._status(NOT_AVAILABLE)
            return
        except DaemonError as exc:
            self._status(f"Cannot list peers: {exc}")
            return
        info = body if isinstance(body, dict) else {}
        peers = items(body, "data")
        table.clear()
        if not peers and not info.get("node_id"):
            # An empty list from a daemon that says nothing about its own mesh: no mesh runs.
            self.available = False
            self._status(NOT_AVAILABLE)
            return
        self.available = True
        for peer in peers:
            key = str(peer.get("node_id") or peer.get("id") or peer.get("name", ""))
            name = str(peer.get("name") or key)
            addr = str(peer.get("address") or peer.get("host") or "—")
            table.add_row(name, addr, _state(peer), _load(peer), key=key)
        me = f"this box {info['node_id']} · " if info.get("node_id") else ""
        pairing = f" · pairing: {info['pairing']}" if info.get("pairing") else ""
        count = f"{len(peers)} peer" if len(peers) == 1 else f"{len(peers)} peers"
        self._status(f"{me}{count}{pairing} · ^p pairs with a code, Del unpairs")

    @on(Input.Submitted, "#pair-code")
    def _pair_submitted(self, event: Input.Submitted) -> None:
        # "1234-5678" or, without mDNS, "1234-5678 192.168.1.20:8765" (what `pair` prints).
        words = event.value.replace("--peer", " ").split()
        if words:
            self.pair(words[0], words[1] if len(words) > 1 else None)

    @work(group="mesh-change", exclusive=True, exit_on_error=False)
    async def pair(self, code: str, peer: str | None = None) -> None:
        body = {"code": code} if peer is None else {"code": code, "peer": peer}
        try:
            await self.mapp.client.post_json("/api/peers/pair", body)
        except NotAvailable:
            self._status(NOT_AVAILABLE)
            return
        except DaemonError as exc:
            self.mapp.report(exc, "pairing failed")
            return
        self.query_one("#pair-code", Input).value = ""
        self.mapp.note("paired with a new peer")
        self.notify("Paired.")
        self.load()

    @work(group="mesh-change", exclusive=True, exit_on_error=False)
    async def action_unpair(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        if not key or not await self.app.push_screen_wait(ConfirmScreen(f"Unpair {key}?")):
            return
        try:
            await self.mapp.client.delete(f"/api/peers/{key}")
        except DaemonError as exc:
            self.mapp.report(exc, "unpairing failed")
            return
        self.mapp.note(f"unpaired {key}")
        self.load()
