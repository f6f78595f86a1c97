"""What the running server tells the CLI (`DATA/mesh/state.json`) and remembers across starts."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

from mongars_edge.datadir import write_private
from mongars_edge.mesh import codec
from mongars_edge.mesh.identity import mesh_dir
from mongars_edge.mesh.members import mesh_hash
from mongars_edge.mesh.peers import Peer, explain

if TYPE_CHECKING:
    from mongars_edge.mesh.service import MeshService

STATE_FILE = "state.json"


def remember_addresses(service: MeshService) -> None:
    """Members' addresses from the last run: dial them at once instead of waiting for mDNS."""
    try:
        rows = json.loads((mesh_dir(service.data_dir) / STATE_FILE).read_text())["peers"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for row in rows if isinstance(rows, list) else []:
        try:
            node_id, address = str(row["node_id"]), str(row["address"])
            host, _, port = address.rpartition(":")
            if service.state.key_of(node_id) is not None and host and port.isdigit():
                service.peers[node_id] = Peer(
                    node_id, host.strip("[]"), int(port), source="remembered"
                )
        except (KeyError, TypeError):
            continue


def report(service: MeshService) -> dict[str, Any]:
    """What `mongars-edge peers` prints."""
    model = service.engine.info.id if service.engine else ""
    rows = []
    for peer in sorted(service.peers.values(), key=lambda p: p.node_id):
        rows.append(
            {
                "node_id": peer.node_id,
                "address": _address(peer),
                "source": peer.source,
                "paired": service.state.key_of(peer.node_id) is not None,
                "linked": peer.linked,
                "claimed_tok_s": round(peer.telemetry.gen_tok_s, 1) if peer.telemetry else 0,
                "measured_tok_s": round(peer.measured_tok_s, 1),
                "busy": (peer.telemetry.active + peer.telemetry.queue_depth)
                if peer.telemetry
                else 0,
                "why": explain(
                    peer,
                    paired=service.state.key_of(peer.node_id) is not None,
                    revoked=peer.node_id in service.state.revoked,
                    version=codec.PROTOCOL_VERSION,
                    model=model,
                ),
            }
        )
    return {
        "node_id": service.me.node_id,
        "mesh": mesh_hash(service.state.mesh_id),
        "pid": os.getpid(),
        "host": service.config.host,
        "port": service.port,
        "members": sorted(service.state.members),
        "served": service.serving.count,
        "forwarded": service.forwarded,
        "peers": rows,
        "updated_at": time.time(),
    }


def _address(peer: Peer) -> str:
    """HOST:PORT where the box accepts links; only the host while its port is not known."""
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{host}:{peer.port}" if host and peer.port else host


def write_state(service: MeshService) -> None:
    write_private(mesh_dir(service.data_dir) / STATE_FILE, json.dumps(report(service), indent=1))
