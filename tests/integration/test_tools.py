"""Tool calls through a real `serve` on a real tool-capable model (Qwen2.5-Coder 0.5B, pulled
from PyPI), driven by the official `openai` client as Home Assistant drives it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.models import pulled
from tests.support.server import Server, start_server

MODEL = "qwen2.5-coder-0.5b-instruct"

# Home Assistant's style: a system prompt listing the devices, and its intent tools.
SYSTEM = (
    "You are a voice assistant for Home Assistant.\n"
    "Answer questions about the world truthfully.\n"
    "An overview of the areas and the devices in this smart home:\n"
    "- names: Kitchen Light\n  domain: light\n  state: 'off'\n  areas: Kitchen\n"
)


def _tool(tool: str, description: str, **properties: Any) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool,
            "description": description,
            "parameters": {"type": "object", "properties": properties},
        },
    }


TOOLS: list[Any] = [
    _tool("HassTurnOn", "Turns on/opens a device or entity", name={"type": "string"}),
    _tool("HassTurnOff", "Turns off/closes a device or entity", name={"type": "string"}),
]
TURN_ON: list[Any] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Turn on the kitchen light"},
]


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    gguf = pulled(MODEL)
    data_dir = tmp_path_factory.mktemp("tools") / "data"
    server = start_server(data_dir, env={"MONGARS_MODEL": str(gguf), "MONGARS_N_THREADS": "2"})
    try:
        yield server
    finally:
        server.stop(20)


@pytest.fixture
def client(box: Server) -> OpenAI:
    return OpenAI(base_url=box.url + "/v1", api_key=box.admin_token(), max_retries=0)


def test_a_home_control_request_gets_a_tool_call(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="mongars", messages=TURN_ON, tools=TOOLS, temperature=0, max_tokens=96
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "HassTurnOn"
    assert "kitchen" in json.loads(call.function.arguments)["name"].lower()


def test_streamed_calls_come_as_indexed_deltas(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="mongars", messages=TURN_ON, tools=TOOLS, temperature=0, max_tokens=96, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    text = ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for piece in delta.tool_calls or []:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            if piece.function is not None:
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert text == ""  # the call's JSON is not shown as text
    assert list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "HassTurnOn"
    assert "kitchen" in json.loads(calls[0]["arguments"])["name"].lower()


def test_the_answer_after_a_tool_result_is_text(client: OpenAI) -> None:
    messages: list[Any] = [
        *TURN_ON,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "HassTurnOn", "arguments": '{"name": "Kitchen Light"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"success": true}'},
    ]
    reply = client.chat.completions.create(
        model="mongars", messages=messages, tools=TOOLS, temperature=0, max_tokens=64
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert choice.message.content


def test_a_question_that_needs_no_tool_is_answered_in_text(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="mongars",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        tools=TOOLS,
        temperature=0,
        max_tokens=48,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert "paris" in (reply.choices[0].message.content or "").lower()


def test_required_and_named_choices_force_a_declared_call(client: OpenAI) -> None:
    question: list[Any] = [{"role": "user", "content": "Hello, how are you?"}]
    choices: list[Any] = ["required", {"type": "function", "function": {"name": "HassTurnOff"}}]
    for choice in choices:
        reply = client.chat.completions.create(
            model="mongars",
            messages=question,
            tools=TOOLS,
            tool_choice=choice,
            temperature=0,
            max_tokens=64,
        )
        calls = reply.choices[0].message.tool_calls or []
        assert calls, reply
        call = calls[0]
        assert call.type == "function"
        assert call.function.name in {"HassTurnOn", "HassTurnOff"}
        if isinstance(choice, dict):
            assert call.function.name == "HassTurnOff"
        json.loads(call.function.arguments)


def test_home_assistant_setup_with_a_dummy_tool_works_streamed_and_not(client: OpenAI) -> None:
    """HA's llama_cpp integration checks a new server with a dummy tool, without and then
    with streaming, before it can be added."""
    dummy: list[Any] = [_tool("test_tool", "A test tool")]
    hi: list[Any] = [{"role": "user", "content": "hi"}]
    reply = client.chat.completions.create(
        model="mongars",
        messages=hi,
        tools=dummy,
        max_tokens=16,
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    chunks: list[Any] = list(
        client.chat.completions.create(
            model="mongars",
            messages=hi,
            tools=dummy,
            max_tokens=16,
            stream=True,
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [_tool("bad name!", "x")]}, "tools[0].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "t", "parameters": {"type": 3}}}]},
            "tools[0].function.parameters",
        ),
        ({"tool_choice": {"type": "function", "function": {"name": "Nope"}}}, "tool_choice"),
        (
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "tool", "tool_call_id": "c9", "content": "{}"},
                ]
            },
            "messages[1].tool_call_id",
        ),
    ],
)
def test_bad_tool_input_is_a_400_naming_the_field(
    box: Server, change: dict[str, Any], param: str
) -> None:
    body = {"model": "mongars", "messages": TURN_ON, "tools": TOOLS, "max_tokens": 8, **change}
    resp = httpx.post(
        box.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {box.admin_token()}"},
        timeout=60,
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_a_model_whose_template_has_no_tools_refuses_them(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = start_server(tmp_path_factory.mktemp("notools") / "data")  # the 135M: no tools
    try:
        client = OpenAI(base_url=server.url + "/v1", api_key=server.admin_token(), max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="mongars", messages=TURN_ON, tools=TOOLS)
        assert "does not support tools" in str(caught.value)
    finally:
        server.stop(20)
