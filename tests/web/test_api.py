"""The native API, /metrics, /openapi.json and the page's static routes, in-process."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.web import create_app
from mongars_edge.web.schemas.document import document
from tests.support.accounts import bearer
from tests.support.server import TEST_SETTINGS


async def test_conversations_crud_and_export(client: httpx.AsyncClient, runtime: Runtime) -> None:
    headers = await bearer(runtime, "ana")
    made = await client.post("/api/conversations", json={"title": "Recettes"}, headers=headers)
    cid = made.json()["id"]
    uid = made.json()["user_id"]
    await runtime.memory.add_turn(uid, cid, "Une recette de tourtière?", "Voici…")
    renamed = await client.patch(
        f"/api/conversations/{cid}", json={"title": "Tourtière"}, headers=headers
    )
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Tourtière"
    listed = (await client.get("/api/conversations?limit=5", headers=headers)).json()["data"]
    assert [c["title"] for c in listed] == ["Tourtière"]
    export = await client.get(f"/api/conversations/{cid}/export", headers=headers)
    assert "attachment" in export.headers["content-disposition"]
    assert [m["role"] for m in export.json()["messages"]] == ["user", "assistant"]
    assert (await client.delete(f"/api/conversations/{cid}", headers=headers)).status_code == 204
    assert (await client.get(f"/api/conversations/{cid}", headers=headers)).status_code == 404
    for bad in ("/api/conversations/abc", "/api/conversations/-1", "/api/conversations/9" * 3):
        assert (await client.get(bad, headers=headers)).status_code == 404
    assert (await client.get("/api/conversations?limit=0", headers=headers)).status_code == 400
    assert (await client.get("/api/conversations?limit=x", headers=headers)).status_code == 400


async def test_memories_search_and_export(client: httpx.AsyncClient, runtime: Runtime) -> None:
    headers = await bearer(runtime, "ana")
    for text in ("I live in Rimouski.", "My cat is named Biscuit.", "I love sailing."):
        response = await client.post("/api/memories", json={"text": text}, headers=headers)
        assert response.status_code == 201
    found = await client.get("/api/memories/search?q=what is my cat called", headers=headers)
    assert found.json()["data"][0]["text"] == "My cat is named Biscuit."
    assert len((await client.get("/api/memories", headers=headers)).json()["data"]) == 3
    bad_kind = await client.post(
        "/api/memories", json={"text": "x", "kind": "gossip"}, headers=headers
    )
    assert bad_kind.status_code == 400
    everything = (await client.get("/api/me/export", headers=headers)).json()
    assert "memories" in str(everything.keys()) or everything


async def test_box_routes(client: httpx.AsyncClient, runtime: Runtime) -> None:
    headers = await bearer(runtime, "ana")
    hardware = (await client.get("/api/hardware", headers=headers)).json()
    assert hardware["facts"]["cpu_count"] >= 1 and "n_threads" in hardware["profile"]
    models = (await client.get("/api/models", headers=headers)).json()
    assert models["chat"]["id"] == "smollm2-135m-instruct"
    assert models["load"]["n_parallel"] >= 1
    assert (await client.get("/api/adapters", headers=headers)).json() == {"data": []}
    peers = (await client.get("/api/peers", headers=headers)).json()
    assert peers["data"] == [] and "peers" not in peers
    pair = await client.post("/api/peers/pair", json={"code": "x"}, headers=headers)
    assert pair.status_code == 403  # administrators only
    admin = await bearer(runtime, "root", admin=True)
    pair = await client.post("/api/peers/pair", json={"code": "x"}, headers=admin)
    assert pair.status_code == 409  # no mesh in these tests
    assert (await client.delete("/api/peers/abc", headers=admin)).status_code == 409
    health = (await client.get("/health")).json()
    public = {
        "status",
        "version",
        "model",
        "model_setting",
        "split",
        "uptime_s",
        "board",
        "profile",
        "speech",
        "onnx",
        "problems",
    }
    assert health["model"] == "smollm2-135m-instruct"
    assert health["split"] is None  # the model is not split across boxes
    # A client on this machine also learns where the data is (the CLI follows it)...
    assert set(health) == public | {"data_dir"} and health["data_dir"] == str(runtime.data_dir)
    # ...a client elsewhere on the LAN does not.
    lan = httpx.ASGITransport(app=create_app(runtime), client=("192.168.1.9", 40000))
    async with httpx.AsyncClient(transport=lan, base_url="http://192.168.1.20:8080") as remote:
        assert set((await remote.get("/health")).json()) == public


async def test_metrics_for_admins(client: httpx.AsyncClient, runtime: Runtime) -> None:
    admin = await bearer(runtime, "root", admin=True)
    reply = await client.post(
        "/v1/chat/completions",
        json={"model": "mongars", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        headers=admin,
    )
    assert reply.status_code == 200
    await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    text = (await client.get("/metrics", headers=admin)).text
    for name in (
        "mongars_http_requests_total",
        'route="/v1/chat/completions"',
        "mongars_time_to_first_token_seconds_bucket",
        "mongars_recall_seconds_count",
        "mongars_queue_depth",
        "mongars_active_sequences",
        "mongars_generation_tokens_per_second",
        'mongars_errors_total{kind="invalid_api_key"}',
        'mongars_chat_turns_total{status="complete"}',
    ):
        assert name in text, name
    assert (await client.get("/metrics")).status_code == 401


async def test_openapi_and_page(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    assert "/v1/chat/completions" in doc["paths"]
    page = await client.get("/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<script src="/static/voice.js" defer></script>' in page.text
    assert '<button id="speak-toggle" hidden' in page.text
    assert '<button id="ptt" hidden' in page.text
    assert (await client.get("/setup")).text == page.text
    assert (await client.get("/static/app.js")).status_code == 200
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
        assert (await client.get(path)).status_code == 404
    missing = await client.get("/nope")
    assert missing.status_code == 404
    api_missing = await client.get("/api/nope")
    assert api_missing.json()["error"]["code"] == "not_found"


_PAGES = frozenset({"/", "/login", "/setup"})  # the chat page's HTML, not API
_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def _served(routes: Iterable[BaseRoute], prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) of every route the app answers, Mounts included, static files skipped.

    Paths are written as OpenAPI writes them: `{model:path}` becomes `{model}`. HEAD, which
    Starlette adds to every GET route by itself, is left out."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, Mount):
            if not isinstance(route.app, StaticFiles):
                found |= _served(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", prefix + route.path)
            if path in _PAGES:
                continue
            for method in route.methods or {"GET"}:
                if method != "HEAD":
                    found.add((path, method.lower()))
        else:
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")
    return found


async def test_openapi_documents_every_route(runtime: Runtime) -> None:
    """Each path and method the app serves is in /openapi.json, and nothing else is."""
    app = create_app(runtime)
    served = _served(app.routes)
    assert ("/v1/audio/speech", "post") in served  # the speech routes are mounted
    documented = {
        (path, method)
        for path, item in document(app.routes, "test")["paths"].items()
        for method in item
        if method in _METHODS
    }
    assert served - documented == set(), "served but not in /openapi.json"
    assert documented - served == set(), "in /openapi.json but not served"


async def test_speech_routes_while_speech_is_off(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """The web tests' box has speech off: a bad request is still a 400 that names the field,
    a good one the documented 503; never a 500."""
    headers = await bearer(runtime, "ana")
    status = await client.get("/api/speech", headers=headers)
    assert status.json() == {
        "tts": False,
        "stt": False,
        "voices": [],
        "stt_languages": [],
        "wyoming_port": None,
    }
    doc = (await client.get("/openapi.json")).json()
    assert set(status.json()) == set(doc["components"]["schemas"]["SpeechStatus"]["required"])
    for body, param in [
        ({}, "input"),
        ({"input": 1}, "input"),
        ({"input": "Hi.", "response_format": "mp3"}, "response_format"),
        ({"input": "Hi.", "speed": 9}, "speed"),
        ({"input": "Hi.", "voice": []}, "voice"),
    ]:
        bad = await client.post("/v1/audio/speech", json=body, headers=headers)
        assert bad.status_code == 400, body
        assert bad.json()["error"]["param"] == param, body
    assert (
        await client.post("/v1/audio/speech", json={"input": "   "}, headers=headers)
    ).status_code == 400
    off = await client.post("/v1/audio/speech", json={"input": "Hi."}, headers=headers)
    assert off.status_code == 503
    assert off.json()["error"]["code"] == "unavailable"

    upload = {"file": ("s.wav", b"RIFF....WAVE", "audio/wav")}
    url = "/v1/audio/transcriptions"
    off = await client.post(url, files=upload, headers=headers)
    assert off.status_code == 503
    assert off.json()["error"]["code"] == "unavailable"
    srt = await client.post(url, files=upload, data={"response_format": "srt"}, headers=headers)
    assert srt.json()["error"]["param"] == "response_format"
    no_file = await client.post(url, files={"model": (None, "whisper-1")}, headers=headers)
    assert no_file.json()["error"]["param"] == "file"
    for ctype, content in [
        ("application/json", b'{"file": "abc"}'),
        ("multipart/form-data", b"no boundary"),
        ("multipart/form-data; boundary=x", b"--x\r\nno headers end"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Type: a\r\n\r\nno name\r\n--x--"),
    ]:
        bad = await client.post(url, content=content, headers=headers | {"content-type": ctype})
        assert bad.status_code == 400, (ctype, content, bad.text)
        assert bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.model  # no chat model, but the Runtime opens the embedder
async def test_no_model_is_503(data_dir: Path) -> None:
    settings = load_settings(
        environ={}, cli={"data_dir": data_dir, **TEST_SETTINGS, "model": "off"}
    )
    async with Runtime(settings) as runtime:
        headers = await bearer(runtime, "ana")
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"model": "mongars", "messages": [{"role": "user", "content": "hi"}]}
            reply = await client.post("/v1/chat/completions", json=body, headers=headers)
            assert reply.status_code == 503
            assert reply.json()["error"]["type"] == "server_error"
            models = (await client.get("/v1/models", headers=headers)).json()["data"]
            assert all("e5" in m["id"] for m in models)


async def test_models_are_switched_and_removed_by_administrators(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    """A stray GGUF in data_dir/models is listed, loaded (on demand too), and removed; only
    administrators change what the box runs."""
    import shutil

    from tests.inference.gen_models import build_all

    stray = runtime.data_dir / "models" / "stray.gguf"
    stray.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(build_all()["tiny"], stray)
    user = await bearer(runtime, "ana")
    admin = await bearer(runtime, "root", admin=True)
    listing = (await client.get("/api/models", headers=user)).json()
    rows = {row["id"]: row for row in listing["catalog"]}
    assert rows["smollm2-135m-instruct"]["loaded"] and rows["stray"]["installed"]
    assert not rows["stray"]["loaded"]
    assert listing["recommended"] == runtime.profile.model
    cards = {c["id"]: c for c in (await client.get("/v1/models", headers=user)).json()["data"]}
    assert cards["smollm2-135m-instruct"]["loaded"] and not cards["stray"]["loaded"]

    load = {"model": "stray"}
    assert (await client.post("/api/models/load", json=load, headers=user)).status_code == 403
    missing = await client.post("/api/models/load", json={"model": "nope"}, headers=admin)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    assert (await client.post("/api/models/load", json=load, headers=admin)).json() == {
        "loaded": "stray"
    }
    assert (await client.get("/health")).json()["model"] == "stray"
    refused = await client.delete("/api/models/stray", headers=admin)
    assert refused.status_code == 409 and "answering now" in refused.json()["error"]["message"]

    # Naming an installed model loads it, as Ollama does.
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}
    reply = await client.post("/v1/chat/completions", json=body | {"max_tokens": 2}, headers=user)
    assert reply.status_code == 200 and reply.json()["model"] == "smollm2-135m-instruct"
    assert (await client.delete("/api/models/stray", headers=admin)).status_code == 204
    assert not stray.exists()
    gone = await client.post("/api/models/pull", json={"model": "stray"}, headers=admin)
    assert gone.status_code == 404
