"""`mongars-edge pair`, `pair --join CODE`, `peers`, `peers remove ID` (imports stay light)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import click

from mongars_edge.cli.base import common_options, make_settings
from mongars_edge.mesh.errors import PairingError


def _running_state(data_dir: Path) -> dict[str, Any] | None:
    """What the running server last wrote, or None when no server runs on this data dir."""
    from mongars_edge.datadir import DataDir

    try:
        state: dict[str, Any] = json.loads(DataDir(data_dir).mesh_state.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state


def _wait_linked(data_dir: Path, node_id: str, timeout_s: float) -> dict[str, Any] | None:
    """The running server's row for *node_id* once linked; the last row seen (or {}) if the
    link did not come within *timeout_s*; None when no server runs on *data_dir*."""
    end = time.monotonic() + timeout_s
    row: dict[str, Any] = {}
    while True:
        state = _running_state(data_dir)
        if state is None:
            return None
        row = next((r for r in state.get("peers", []) if r.get("node_id") == node_id), row)
        if row.get("linked") or time.monotonic() >= end:
            return row
        time.sleep(0.2)


def _linked_line(data_dir: Path, node_id: str, timeout_s: float = 15.0) -> str:
    """What `pair` says about the link to a box it just paired with."""
    row = _wait_linked(data_dir, node_id, timeout_s)
    if row is None:
        return f"this box is not serving: it links to {node_id} when it starts (`serve`)"
    if row.get("linked"):
        return f"linked to {node_id} at {row.get('address') or '?'}"
    why = row.get("why") or "not seen yet"
    return f"not linked to {node_id} yet ({why}); it keeps trying: see `mongars-edge peers`"


def _own_address(state: dict[str, Any]) -> str:
    """HOST:PORT other boxes give `pair --join --peer` to reach this one's mesh."""
    host = str(state.get("host") or "")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - listening everywhere: name one address
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect(("192.0.2.1", 9))  # picks the outgoing interface; sends nothing
                host = str(probe.getsockname()[0])
        except OSError:
            host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{state.get('port') or 8765}"


def add_commands(main: click.Group) -> None:
    """Register the mesh commands on the CLI group."""

    @main.command("pair")
    @common_options
    @click.option("--join", "code", help="Join a mesh with the code shown by a member.")
    @click.option("--peer", help="Member address as HOST:PORT (default: boxes found by mDNS).")
    @click.option("--ttl", type=float, default=300.0, show_default=True, help="Code lifetime (s).")
    def pair_cmd(
        config_path: Path | None, code: str | None, peer: str | None, ttl: float, **flags: Any
    ) -> None:
        """Show a one-time pairing code, or join a mesh with one."""
        from mongars_edge.mesh import pairing
        from mongars_edge.mesh.identity import Identity
        from mongars_edge.mesh.members import MemberFile
        from mongars_edge.mesh.peers import split_address

        settings = make_settings(config_path, **flags)
        data_dir = settings.resolved_data_dir()
        me = Identity.load_or_create(data_dir)
        if code is None:
            running = _running_state(data_dir)
            if running is None:
                raise PairingError(
                    "this box is not serving; start it (`mongars-edge serve`) so peers can reach it"
                )
            before = set(MemberFile(data_dir).read().members)
            shown = pairing.open_window(data_dir, ttl)
            click.echo(f"pairing code: {shown}")
            click.echo(
                f"on the new box: mongars-edge pair --join {shown} --peer "
                f"{_own_address(running)}  (valid {ttl:.0f} s)"
            )
            end = time.monotonic() + ttl
            while time.monotonic() < end and pairing.window_open(data_dir):
                time.sleep(0.2)
            time.sleep(0.3)
            joined = set(MemberFile(data_dir).read().members) - before
            if not joined:
                raise PairingError("nobody joined with that code (wrong code, expired, or none)")
            click.echo("paired: " + ", ".join(sorted(joined)))
            for node_id in sorted(joined):
                click.echo(_linked_line(data_dir, node_id))
            return
        if peer:
            given = split_address(peer)
            if given is None:
                raise PairingError(f"--peer wants HOST:PORT, not {peer!r}")
            targets = [given]
        else:
            targets = pairing.unpaired_addresses((_running_state(data_dir) or {}).get("peers", []))
            if not targets:
                raise PairingError(
                    "no unpaired box seen on the network; is this box serving? "
                    "Or give the member's address with --peer HOST:PORT"
                )
        member = asyncio.run(
            pairing.join_through(targets, code, me, data_dir, socket.gethostname())
        )
        click.echo(f"joined the mesh through {member}; this box is {me.node_id}")
        click.echo(_linked_line(data_dir, member))

    @main.group("peers", invoke_without_command=True)
    @common_options
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    @click.pass_context
    def peers_cmd(
        ctx: click.Context, /, config_path: Path | None, as_json: bool, **flags: Any
    ) -> None:
        """Boxes seen on the network and why each is or is not used."""
        ctx.obj = (config_path, flags)
        if ctx.invoked_subcommand is not None:
            return
        from mongars_edge.mesh.identity import Identity
        from mongars_edge.mesh.members import MemberFile

        settings = make_settings(config_path, **flags)
        data_dir = settings.resolved_data_dir()
        state = _running_state(data_dir)
        if state is None:
            members = MemberFile(data_dir).read()
            state = {
                "node_id": Identity.load_or_create(data_dir).node_id,
                "members": sorted(members.members),
                "peers": [],
                "note": "the box is not serving: only pinned members are listed",
            }
        if as_json:
            click.echo(json.dumps(state, indent=2))
            return
        click.echo(f"this box  {state['node_id']}  mesh {state.get('mesh', '?')}")
        click.echo(f"members   {', '.join(state['members']) or '(none: run `pair`)'}")
        if "note" in state:
            click.echo(state["note"])
        for row in state["peers"]:
            click.echo(f"{row['node_id']}  {row['address'] or '-':<21} {row['why']}")

    @peers_cmd.command("remove")
    @common_options
    @click.argument("node_id")
    @click.pass_context
    def peers_remove(
        ctx: click.Context, /, config_path: Path | None, node_id: str, **flags: Any
    ) -> None:
        """Revoke a member: its key is unpinned here and the revocation is signed and gossiped."""
        from mongars_edge.errors import NotFoundError
        from mongars_edge.mesh import members
        from mongars_edge.mesh.identity import Identity

        # The options are accepted before `remove` too (`peers --data-dir D remove ID`).
        group_config, group_flags = ctx.obj
        flags = {k: v if v is not None else group_flags.get(k) for k, v in flags.items()}
        settings = make_settings(config_path or group_config, **flags)
        data_dir = settings.resolved_data_dir()
        try:
            revoked = members.revoke(data_dir, Identity.load_or_create(data_dir), node_id)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc} (see `peers`)") from None
        click.echo(f"revoked {revoked}; members will refuse it")
