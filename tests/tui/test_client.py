"""DaemonClient against the real daemon: health, metrics, SSE, and each failure's message."""

from __future__ import annotations

import pytest

from mongars_edge.tui.client import (
    AuthFailed,
    DaemonClient,
    DaemonDown,
    DaemonError,
    NotAvailable,
    items,
    parse_metrics,
)
from tests.support.env import free_port
from tests.support.server import Server


async def test_health_and_metrics_of_a_real_daemon(daemon: Server) -> None:
    client = DaemonClient(daemon.url, daemon.token())
    try:
        health = await client.health()
        assert health["status"] in ("ok", "degraded") and health["board"]
        metrics = await client.metrics()
        for name in ("mongars_queue_depth", "mongars_generation_tokens_per_second"):
            assert name in metrics
        hardware = await client.get_json("/api/hardware")
        assert "profile" in hardware and "facts" in hardware
    finally:
        await client.aclose()


async def test_stream_chat_yields_text_and_a_conversation_id(chat_api: Server) -> None:
    client = DaemonClient(chat_api.url, chat_api.token())
    try:
        deltas = [
            d
            async for d in client.stream_chat(
                [{"role": "user", "content": "Hi"}], conversation_id="new", max_tokens=8
            )
        ]
    finally:
        await client.aclose()
    assert "".join(d.text for d in deltas).strip()
    assert {d.conversation_id for d in deltas if d.conversation_id} != set()
    assert deltas[-1].finish_reason in ("stop", "length")


async def test_failures_become_clear_errors(daemon: Server) -> None:
    wrong = DaemonClient(daemon.url, "not-a-token")
    missing = DaemonClient(daemon.url, daemon.token())
    down = DaemonClient(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(AuthFailed, match="refused the token"):
            await wrong.get_json("/api/conversations")
        with pytest.raises(NotAvailable, match="not available on this daemon"):
            await missing.get_json("/api/no-such-thing")
        with pytest.raises(DaemonDown, match="connection refused"):
            await down.health()
        with pytest.raises(DaemonError, match="400"):
            async for _ in missing.stream_chat([], conversation_id="new"):
                pass
    finally:
        for client in (wrong, missing, down):
            await client.aclose()


def test_parse_metrics_sums_labels_and_skips_garbage() -> None:
    text = (
        "# HELP x y\n"
        'mongars_http_requests_total{route="/a"} 2.0\n'
        'mongars_http_requests_total{route="/b"} 3\n'
        "mongars_queue_depth 1\n"
        "garbage line\n"
        "bad_value NaNx\n"
    )
    assert parse_metrics(text) == {"mongars_http_requests_total": 5.0, "mongars_queue_depth": 1.0}


def test_items_reads_lists_in_every_shape() -> None:
    assert items({"data": [{"id": 1}, "x"]}, "peers") == [{"id": 1}]
    assert items({"peers": [{"id": 2}]}, "peers") == [{"id": 2}]
    assert items([{"id": 3}], "any") == [{"id": 3}]
    assert items("nonsense", "any") == []
