"""Tool calls through the Ollama routes of a real `serve` on a tool-capable model (Qwen2.5-Coder
0.5B, pulled from PyPI), driven by the official `ollama` client the way Home Assistant's Ollama
integration drives it: tools declared, `keep_alive` and `num_ctx` sent, arguments read as
objects, results sent back as `tool` messages naming the tool (no call ids)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ollama
import pytest

from tests.support.models import pulled
from tests.support.server import Server, start_server

MODEL = "qwen2.5-coder-0.5b-instruct"
SYSTEM = (
    "You are a voice assistant for Home Assistant.\n"
    "Answer questions about the world truthfully.\n"
    "An overview of the areas and the devices in this smart home:\n"
    "- names: Kitchen Light\n  domain: light\n  state: 'off'\n  areas: Kitchen\n"
)


def _tool(name: str, description: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }


TOOLS = [
    _tool("HassTurnOn", "Turns on/opens a device or entity"),
    _tool("HassTurnOff", "Turns off/closes a device or entity"),
]
TURN_ON: list[Any] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Turn on the kitchen light"},
]
# What Home Assistant sends besides the messages and tools.
HA: dict[str, Any] = {"keep_alive": -1, "options": {"num_ctx": 8192, "temperature": 0}}


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    gguf = pulled(MODEL)
    data_dir = tmp_path_factory.mktemp("ollama-tools") / "data"
    server = start_server(data_dir, env={"MONGARS_MODEL": str(gguf), "MONGARS_N_THREADS": "2"})
    try:
        yield server
    finally:
        server.stop(20)


@pytest.fixture
def client(box: Server) -> Iterator[ollama.Client]:
    headers = {"Authorization": f"Bearer {box.admin_token()}"}
    with ollama.Client(host=box.url, headers=headers) as c:
        yield c


def test_show_says_the_model_takes_tools(client: ollama.Client) -> None:
    assert "tools" in (client.show("mongars").capabilities or [])


def test_a_home_control_request_gets_a_call_with_object_arguments(client: ollama.Client) -> None:
    reply = client.chat(model="mongars", messages=TURN_ON, tools=TOOLS, stream=False, **HA)
    calls = reply.message.tool_calls or []
    assert len(calls) == 1, reply
    assert calls[0].function.name == "HassTurnOn"
    arguments = calls[0].function.arguments
    assert isinstance(arguments, dict) and "kitchen" in arguments["name"].lower()
    assert reply.done and reply.done_reason == "stop"
    assert not reply.message.content  # the call's JSON is not shown as text


def test_streamed_call_comes_in_one_chunk_before_the_last(client: ollama.Client) -> None:
    parts = list(client.chat(model="mongars", messages=TURN_ON, tools=TOOLS, stream=True, **HA))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done
    call = (with_calls[0].message.tool_calls or [])[0]
    assert call.function.name == "HassTurnOn"
    assert "kitchen" in call.function.arguments["name"].lower()
    assert parts[-1].done and parts[-1].eval_count
    assert "".join(p.message.content or "" for p in parts) == ""


def test_the_answer_after_a_tool_result_is_text(client: ollama.Client) -> None:
    messages: list[Any] = [
        *TURN_ON,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}}
            ],
        },
        # Home Assistant's result message: neither a call id nor the tool's name.
        {"role": "tool", "content": '{"data": {"success": true}, "error": null}'},
    ]
    reply = client.chat(model="mongars", messages=messages, tools=TOOLS, stream=False, **HA)
    assert not reply.message.tool_calls, reply
    assert reply.message.content and reply.message.content.strip()
