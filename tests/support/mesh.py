"""Mesh services for tests: loopback addresses, no mDNS, timings shrunk rather than slept on."""

from __future__ import annotations

from typing import Any

from mongars_edge.mesh.node import MeshConfig


def fast_config(port: int, peers: list[int], **overrides: Any) -> MeshConfig:
    """A mesh on 127.0.0.1:*port* dialling the loopback *peers*, gossiping every 0.1 s."""
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "static_peers": tuple(f"127.0.0.1:{p}" for p in peers),
        "mdns": False,
        "gossip_s": 0.1,
        "idle_timeout_s": 2.0,
        "stall_s": 2.0,
    }
    base.update(overrides)
    return MeshConfig(**base)
