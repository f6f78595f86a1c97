"""Telemetry sanitising, the reasons `peers` gives, and the router's finish-time prediction."""

from __future__ import annotations

import math
import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from mongars_edge.mesh.codec import Telemetry
from mongars_edge.mesh.peers import MAX_TOK_S, Peer, explain, sanitize
from mongars_edge.mesh.router import predict


def telemetry(**changes: object) -> Telemetry:
    base: dict[str, object] = {
        "node_id": "n1",
        "model": "m",
        "queue_depth": 0,
        "active": 0,
        "n_parallel": 2,
        "gen_tok_s": 20.0,
        "prompt_tok_s": 100.0,
        "temp_c": 50.0,
        "throttled": False,
        "adapters": [],
        "accepting": True,
    }
    base.update(changes)
    return Telemetry(**base)  # type: ignore[arg-type]


@given(
    st.integers(-(2**40), 2**40),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_sanitised_telemetry_is_plausible(q: int, slots: int, gen: float, temp: float) -> None:
    t = sanitize(telemetry(queue_depth=q, n_parallel=slots, gen_tok_s=gen, temp_c=temp))
    assert 0 <= t.queue_depth <= 10_000 and 1 <= t.n_parallel <= 64
    assert 0 <= t.gen_tok_s <= MAX_TOK_S and math.isfinite(t.temp_c)


def test_reasons() -> None:
    peer = Peer("n1", "10.77.0.2", 8765, version=1)
    args: dict[str, Any] = {"paired": True, "revoked": False, "version": 1, "model": "m"}
    assert "not paired" in explain(peer, **{**args, "paired": False})
    assert "revoked" in explain(peer, **{**args, "revoked": True})
    assert "protocol 2, this box 1: update" in explain(Peer("n1", version=2), **args)
    peer.last_error = "connection refused"
    assert explain(peer, **args) == "not used: unreachable (connection refused)"
    peer.linked = True
    assert "no recent telemetry" in explain(peer, **args)
    peer.telemetry, peer.telemetry_at = telemetry(), time.monotonic()
    assert explain(peer, **args).startswith("used")
    peer.telemetry = telemetry(model="other")
    assert "another model" in explain(peer, **args)
    peer.telemetry = telemetry(queue_depth=5)
    assert "overloaded" in explain(peer, **args)


def test_claims_are_capped_by_measurements() -> None:
    peer = Peer("n1")
    peer.telemetry = telemetry(gen_tok_s=4000.0)
    assert peer.trusted_tok_s() == 4000.0
    peer.record_result(20, 1.0)
    assert peer.trusted_tok_s() == 30.0


def test_a_streams_rate_counts_the_sequences_sharing_the_peer() -> None:
    """Telemetry claims the aggregate rate: 3 streams at 20 tok/s each back up a claim of 60."""
    peer = Peer("n1")
    peer.telemetry = telemetry(gen_tok_s=60.0, n_parallel=4)
    peer.record_result(20, 1.0, streams=3)
    assert peer.measured_tok_s == 60.0
    assert peer.trusted_tok_s() == 60.0
    peer.record_result(20, 1.0, streams=9)  # never more than the peer's slots
    assert peer.measured_tok_s == 0.7 * 60.0 + 0.3 * 80.0


def test_prediction_grows_with_load_and_prefers_faster_boxes() -> None:
    idle = predict(0, 0, 1, 20.0, 200.0, 100, 50)
    busy = predict(2, 1, 1, 20.0, 200.0, 100, 50)
    faster = predict(0, 0, 1, 40.0, 200.0, 100, 50)
    assert faster < idle < busy
    # a cold prompt average (warming up from zero) is not taken at face value
    assert predict(0, 0, 1, 20.0, 5.0, 100, 50) == predict(0, 0, 1, 20.0, 80.0, 100, 50)


def test_a_loopback_box_does_not_advertise() -> None:
    from mongars_edge.mesh.node import MeshConfig
    from mongars_edge.mesh.service import _advertise

    assert not _advertise(MeshConfig(host="127.0.0.1", port=0))
    assert not _advertise(MeshConfig(host="::1", port=0))
    assert _advertise(MeshConfig(host="10.77.0.1", port=0))
    assert _advertise(MeshConfig(host="127.0.0.1", port=0, mdns_interfaces=("10.77.0.1",)))


def test_a_burst_fills_every_box_before_a_second_wave() -> None:
    """16 requests at once on two boxes of 4 slots whose measured rates differ by 25%: each
    takes 8 (two waves); one more on either would make it run a third wave alone."""
    counts = [0, 0]
    rates = [12.0, 9.6]
    for _ in range(16):
        costs = [predict(0, counts[i], 4, rates[i], 100.0, 40, 64) for i in range(2)]
        counts[costs.index(min(costs))] += 1
    assert counts == [8, 8]
