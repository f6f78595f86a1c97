"""Ollama bodies -> the pipeline's Turn (pure): tool results find their calls, options map
onto sampling as Ollama defines them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from mongars_edge.chat.pipeline import Turn
from mongars_edge.errors import InvalidRequestError
from mongars_edge.web.ollama_chat import chat_turn, to_sampling
from mongars_edge.web.schemas import ollama as wire


def _turn(body: Any) -> Turn:
    decoded = msgspec.json.decode(msgspec.json.encode(body), type=wire.OllamaChatRequest)
    return chat_turn(decoded, None, 99)


def _call(name: str, **extra: object) -> dict[str, object]:
    return {"function": {"name": name, "arguments": {"x": 1}}, **extra}


def test_tool_results_answer_calls_by_id_name_or_order() -> None:
    turn = _turn(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "both"},
                {"role": "assistant", "tool_calls": [_call("a"), _call("b", id="mine")]},
                {"role": "tool", "content": "B", "tool_name": "b"},
                {"role": "tool", "content": "A"},
            ],
        }
    )
    messages = turn.messages
    calls = messages[1].tool_calls
    assert [c.id for c in calls] == ["call_1_0", "mine"]
    assert calls[0].arguments == '{"x": 1}'
    assert [m.tool_call_id for m in messages[2:]] == ["mine", "call_1_0"]


def test_a_result_by_id_and_an_orphan() -> None:
    by_id = _turn(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "tool_calls": [_call("a", id="c1"), _call("a", id="c2")]},
                {"role": "tool", "content": "2", "tool_call_id": "c2"},
                {"role": "tool", "content": "1", "tool_name": "a"},
            ],
        }
    )
    assert [m.tool_call_id for m in by_id.messages[2:]] == ["c2", "c1"]
    orphan = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [_call("a")]},
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "again"},
        ],
    }
    with pytest.raises(InvalidRequestError, match=r"messages\[3\]"):
        _turn(orphan)
    wrong_id = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "go"},
            {"role": "tool", "content": "1", "tool_call_id": "nope"},
        ],
    }
    with pytest.raises(InvalidRequestError):
        _turn(wrong_id)
    user_calls = {"model": "m", "messages": [{"role": "user", "tool_calls": [_call("a")]}]}
    with pytest.raises(InvalidRequestError, match="tool_calls"):
        _turn(user_calls)


def test_options_as_ollama_defines_them() -> None:
    sampling, chosen = to_sampling(
        wire.OllamaOptions(num_predict=-1, seed=-1, temperature=0.2, stop=["\n"], num_thread=8),
        99,
    )
    assert (sampling.max_tokens, sampling.seed, sampling.temperature) == (99, None, 0.2)
    assert sampling.stop == ("\n",)
    assert "temperature" in chosen and "top_p" not in chosen
    sampling, _ = to_sampling(wire.OllamaOptions(num_predict=7, seed=2**40 + 5), 99)
    assert (sampling.max_tokens, sampling.seed) == (7, 5)


def test_format_and_tools() -> None:
    assert _turn({"model": "m", "messages": [], "format": "json"}).json_schema == {"type": "object"}
    tool = {"type": "function", "function": {"name": "f"}}
    with pytest.raises(InvalidRequestError, match="format"):
        _turn({"model": "m", "tools": [tool], "format": "json"})
