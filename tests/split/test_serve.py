"""A real `serve` whose model is over its budget: split across a worker, /health says where the
layers live, a lost worker is a clear error while the box keeps serving, and it comes back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.rpcserver import worker
from tests.support.server import Server, start_server

pytestmark = pytest.mark.model


def _health_until(server: Server, state: str, deadline_s: float = 120) -> dict[str, Any]:
    end = time.monotonic() + deadline_s
    while True:
        body = server.wait_healthy()
        if (body.get("split") or {}).get("state") == state or time.monotonic() > end:
            return body
        time.sleep(0.2)


def _ask(server: Server) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.admin_token()}"},
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=120,
    )


def test_serve_splits_a_model_over_its_budget_and_survives_the_worker(data_dir: Path) -> None:
    with worker() as w:
        env = {"MONGARS_MODEL_BUDGET_MB": "200", "MONGARS_SPLIT_WORKERS": w.endpoint}
        server = start_server(data_dir, env=env, deadline_s=300)
        try:
            body = _health_until(server, "serving")
            split = body["split"]
            assert split["state"] == "serving", body
            here, there = split["places"]
            assert (here["where"], here["budget_mb"]) == ("local", 200)
            assert there["endpoint"] == w.endpoint
            assert here["layers"] + there["layers"] == split["n_layer"] == 30
            assert _ask(server).status_code == 200

            w.kill()
            refused = _ask(server)  # the child aborts on its next use of the lost link
            if refused.status_code == 200:
                refused = _ask(server)
            assert refused.status_code == 503, refused.text
            assert "lost" in refused.text
            body = _health_until(server, "lost")
            assert body["status"] == "degraded"
            assert any("was lost" in p for p in body["problems"])

            w.start()
            body = _health_until(server, "serving")
            assert body["split"]["losses"] == 1
            assert _ask(server).status_code == 200
        finally:
            server.stop_cleanly()  # exit 0, no traceback in its output
