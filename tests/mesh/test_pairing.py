"""Joining through a list of addresses (`pair --join`, `POST /api/peers/pair`), no member up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mongars_edge.mesh.errors import PairingError
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.pairing import join_through, unpaired_addresses
from mongars_edge.mesh.peers import split_address
from tests.support.env import free_port


def test_addresses_are_split_and_only_unpaired_boxes_are_tried() -> None:
    assert split_address("10.0.0.2:8765") == ("10.0.0.2", 8765)
    assert split_address("[fe80::1]:8765") == ("fe80::1", 8765)
    for bad in ("", "10.0.0.2", ":8765", "host:port", "host:87a"):
        assert split_address(bad) is None
    rows: list[dict[str, Any]] = [
        {"address": "10.0.0.2:8765", "paired": False},
        {"address": "10.0.0.3:8765", "paired": True},
        {"address": None, "paired": False},
        {"address": "[fe80::1]:9000"},
    ]
    assert unpaired_addresses(rows) == [("10.0.0.2", 8765), ("fe80::1", 9000)]


async def test_one_address_fails_with_its_own_error_several_name_each(data_dir: Path) -> None:
    me = Identity.load_or_create(data_dir)
    one, two = free_port(), free_port()  # nobody listens there
    with pytest.raises(PairingError) as alone:
        await join_through([("127.0.0.1", one)], "1234-5678", me, data_dir, "box")
    assert str(alone.value).startswith(f"cannot reach 127.0.0.1:{one} (connection refused)")
    targets = [("127.0.0.1", one), ("127.0.0.1", two)]
    with pytest.raises(PairingError) as several:
        await join_through(targets, "1234-5678", me, data_dir, "box")
    message = str(several.value)
    assert message.startswith(f"pairing failed: 127.0.0.1:{one}: cannot reach")
    assert f"; 127.0.0.1:{two}: cannot reach" in message
    with pytest.raises(PairingError, match="8 digits"):  # once, not once per address
        await join_through(targets, "12", me, data_dir, "box")
    with pytest.raises(PairingError, match="no box to join through"):
        await join_through([], "1234-5678", me, data_dir, "box")
