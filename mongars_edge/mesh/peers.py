"""What this box knows about other boxes: where they are, their telemetry, why each is (not) used.

Telemetry is a claim. Values are clamped to sane ranges on arrival, and the router trusts a
peer's claimed speed only as far as requests it actually ran there agree (`measured_tok_s`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Final

from mongars_edge.mesh.codec import Telemetry, version_problem

log = logging.getLogger(__name__)

TELEMETRY_STALE_S: Final = 4.0
MAX_TOK_S: Final = 5000.0
MAX_SLOTS: Final = 64
MAX_QUEUE: Final = 10_000


def split_address(address: str) -> tuple[str, int] | None:
    """HOST:PORT (an IPv6 host in brackets) as (host, port); None when it is not one."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


@dataclass
class Peer:
    """One box seen on the network (mDNS or static) or connected to us."""

    node_id: str
    host: str = ""
    port: int = 0
    source: str = "link"
    version: int = 0
    mesh_hash: str = ""
    capabilities: tuple[str, ...] = ()
    seen_at: float = field(default_factory=time.monotonic)
    telemetry: Telemetry | None = None
    telemetry_at: float = 0.0
    linked: bool = False
    last_error: str = ""
    measured_tok_s: float = 0.0
    inflight: int = 0
    failures: int = 0

    def fresh(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.telemetry is not None and now - self.telemetry_at < TELEMETRY_STALE_S

    def record_result(self, tokens: int, seconds: float, streams: int = 1) -> None:
        """A measured generation rate from a request that ran there (EWMA).

        `streams`: how many of our requests were running there. The telemetry claims the box's
        aggregate rate over all its running sequences, so a stream's own rate is scaled by the
        sequences that shared the steps; compared raw, a busy peer looked 20-40% slower than
        the local engine and got fewer requests than it could finish first.
        """
        if tokens < 4 or seconds <= 0:
            return
        running = max(streams, self.telemetry.active if self.telemetry else 0)
        slots = self.telemetry.n_parallel if self.telemetry else running
        rate = tokens / seconds * max(1, min(running, slots))
        self.measured_tok_s = (
            rate if not self.measured_tok_s else 0.7 * self.measured_tok_s + 0.3 * rate
        )

    def trusted_tok_s(self) -> float:
        """The claimed rate, capped by what was measured when there is a measurement."""
        claimed = self.telemetry.gen_tok_s if self.telemetry else 0.0
        if self.measured_tok_s:
            return min(claimed, 1.5 * self.measured_tok_s) if claimed else self.measured_tok_s
        return claimed


def _finite(value: float, lo: float, hi: float) -> float:
    if not math.isfinite(value):
        return lo
    return min(hi, max(lo, value))


def sanitize(t: Telemetry) -> Telemetry:
    """Clamp every figure a peer claims to a plausible range."""
    return Telemetry(
        node_id=t.node_id[:64],
        model=t.model[:200],
        queue_depth=min(MAX_QUEUE, max(0, t.queue_depth)),
        active=min(MAX_QUEUE, max(0, t.active)),
        n_parallel=min(MAX_SLOTS, max(1, t.n_parallel)),
        gen_tok_s=_finite(t.gen_tok_s, 0.0, MAX_TOK_S),
        prompt_tok_s=_finite(t.prompt_tok_s, 0.0, 100 * MAX_TOK_S),
        temp_c=_finite(t.temp_c, -50.0, 150.0),
        throttled=t.throttled,
        adapters=[a[:64] for a in t.adapters[:256]],
        accepting=t.accepting,
        port=t.port if 0 < t.port < 65536 else 0,
        split_budget=t.split_budget,
        llama_build=t.llama_build,
    )


def explain(peer: Peer, *, paired: bool, revoked: bool, version: int, model: str) -> str:
    """Why the router will or will not send work to `peer` (one line, for `peers`)."""
    if revoked:
        return "not used: revoked (peers remove)"
    if not paired:
        return "not used: not paired (run `mongars-edge pair` on a member, then `pair --join`)"
    if peer.version and peer.version != version:
        return f"not used: {version_problem(peer.version, version)}"
    if not peer.linked:
        why = f" ({peer.last_error})" if peer.last_error else ""
        return f"not used: unreachable{why}"
    if not peer.fresh() or peer.telemetry is None:
        return "not used: no recent telemetry"
    t = peer.telemetry
    if t.model != model:
        return f"not used: holds another model ({t.model})"
    if not t.accepting:
        return "not used: not accepting work"
    if t.throttled:
        return "used sparingly: thermally throttled"
    if t.queue_depth > t.n_parallel:
        return f"not used now: overloaded ({t.queue_depth} waiting)"
    return f"used: {t.active}/{t.n_parallel} busy, {peer.trusted_tok_s():.0f} tok/s"
