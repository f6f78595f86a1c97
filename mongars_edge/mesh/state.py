"""What the running server tells the CLI (`DATA/mesh/state.json`) and remembers across starts."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol

from mongars_edge.datadir import DataDir, write_private
from mongars_edge.mesh import codec
from mongars_edge.mesh.identity import mesh_dir
from mongars_edge.mesh.members import mesh_hash
from mongars_edge.mesh.node import NodeState
from mongars_edge.mesh.peers import Peer, explain, split_address


def remember_addresses(node: NodeState) -> None:
    """Members' addresses from the last run: dial them at once instead of waiting for mDNS."""
    try:
        rows = json.loads((DataDir(node.data_dir).mesh_state).read_text())["peers"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for row in rows if isinstance(rows, list) else []:
        try:
            node_id, address = str(row["node_id"]), str(row["address"])
            found = split_address(address)
            if node.state.key_of(node_id) is not None and found is not None:
                node.peers[node_id] = Peer(node_id, *found, source="remembered")
        except (KeyError, TypeError):
            continue


class _HoldsANode(Protocol):
    @property
    def node(self) -> NodeState: ...


def report(source: NodeState | _HoldsANode) -> dict[str, Any]:
    """What `mongars-edge peers` prints (of a node, or of the service that holds it)."""
    node = source if isinstance(source, NodeState) else source.node
    model = node.model_id()
    rows = []
    for peer in sorted(node.peers.values(), key=lambda p: p.node_id):
        rows.append(
            {
                "node_id": peer.node_id,
                "address": _address(peer),
                "source": peer.source,
                "paired": node.state.key_of(peer.node_id) is not None,
                "linked": peer.linked,
                "claimed_tok_s": round(peer.telemetry.gen_tok_s, 1) if peer.telemetry else 0,
                "measured_tok_s": round(peer.measured_tok_s, 1),
                "busy": (peer.telemetry.active + peer.telemetry.queue_depth)
                if peer.telemetry
                else 0,
                "why": explain(
                    peer,
                    paired=node.state.key_of(peer.node_id) is not None,
                    revoked=peer.node_id in node.state.revoked,
                    version=codec.PROTOCOL_VERSION,
                    model=model,
                ),
            }
        )
    return {
        "node_id": node.me.node_id,
        "mesh": mesh_hash(node.state.mesh_id),
        "pid": os.getpid(),
        "host": node.config.host,
        "port": node.port,
        "members": sorted(node.state.members),
        "served": node.served,
        "forwarded": node.forwarded,
        "peers": rows,
        "updated_at": time.time(),
    }


def _address(peer: Peer) -> str:
    """HOST:PORT where the box accepts links; only the host while its port is not known."""
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{host}:{peer.port}" if host and peer.port else host


def write_state(node: NodeState) -> None:
    mesh_dir(node.data_dir)
    write_private(DataDir(node.data_dir).mesh_state, json.dumps(report(node), indent=1))
