"""Reading tool calls back in each family's format, holding streamed calls back, and the
grammars and triggers llama.cpp is given (compiled against a real vocabulary)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference import lowlevel
from mongars_edge.inference.engine import ChatRequest, Message, Sampling
from mongars_edge.inference.templates import ChatTemplate
from mongars_edge.inference.tools import (
    Tool,
    ToolCall,
    ToolStream,
    parse_calls,
    tool_format,
    tool_grammar,
)

LIGHT = Tool(
    "HassLightSet",
    "Sets a light's brightness",
    {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["brightness"],
    },
)
ON = Tool(
    "HassTurnOn",
    "Turns on a device",
    {"type": "object", "properties": {"name": {"type": "string"}}},
)
TOOLS = (LIGHT, ON)


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}\n</tool_call>',
        '[TOOL_CALLS] [{"name": "HassTurnOn", "arguments": {"name": "Kitchen Light"}}]',
        '{"name": "HassTurnOn", "parameters": {"name": "Kitchen Light"}}',  # Llama 3
        '```json\n{\n  "name": "HassTurnOn",\n  "arguments": {"name": "Kitchen Light"}\n}\n```',
        '  {"name": "HassTurnOn", "arguments": "{\\"name\\": \\"Kitchen Light\\"}"}',
        '{"type": "function", "function": {"name": "HassTurnOn", '
        '"arguments": {"name": "Kitchen Light"}}}',  # OpenAI's own shape, echoed
    ],
)
def test_each_family_format_is_read(text: str) -> None:
    rest, calls = parse_calls(text, TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("HassTurnOn", {"name": "Kitchen Light"})
    ]
    assert rest == ""
    assert calls[0].id.startswith("call_")


def test_text_around_a_tagged_call_is_kept() -> None:
    text = 'Sure.\n<tool_call>{"name": "HassTurnOn", "arguments": {}}</tool_call>'
    assert parse_calls(text, TOOLS)[0] == "Sure."


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "UnlockFrontDoor", "arguments": {}}',  # never a tool that was not declared
        '{"name": "HassLightSet", "arguments": {"brightness": 150}}',  # outside the schema
        '{"name": "HassLightSet", "arguments": {"name": "x"}}',  # a required argument missing
        '{"name": "HassTurnOn", "arguments": "not json"}',
        "The capital of France is Paris.",
        '{"answer": 42}',
    ],
)
def test_what_is_not_a_valid_call_stays_text(text: str) -> None:
    assert parse_calls(text, TOOLS) == (text, [])


def test_a_call_repeated_in_a_loop_counts_once_and_two_different_calls_both_count() -> None:
    one = '{"name": "HassTurnOn", "arguments": {"name": "A"}}'
    two = '{"name": "HassTurnOn", "arguments": {"name": "B"}}'
    _, calls = parse_calls(f"{one}\n{one}\n{two}\n{one}", TOOLS)
    assert [json.loads(c.arguments)["name"] for c in calls] == ["A", "B"]


def _split(pieces: list[str]) -> tuple[list[str], tuple[str, list[ToolCall]]]:
    stream = ToolStream(TOOLS)
    shown = [stream.feed(p) for p in pieces]
    return shown, stream.finish()


def test_a_streamed_call_is_held_back_and_read_at_the_end() -> None:
    shown, (rest, calls) = _split(
        ["Okay! ", "<tool", "_call>", '{"name": "HassTurnOn", ', '"arguments": {}}', "</tool_call>"]
    )
    assert "".join(shown) == "Okay! "
    assert rest == "" and [c.name for c in calls] == ["HassTurnOn"]


def test_streamed_prose_passes_at_once_even_with_angle_brackets_and_fences_inside() -> None:
    pieces = ["Use ", "<b>", " and ", "`code`", " freely."]
    shown, (rest, calls) = _split(pieces)
    assert "".join(shown) + rest == "".join(pieces)
    assert shown[0] == "Use " and calls == []


def test_a_held_reply_that_was_not_a_call_comes_out_as_text() -> None:
    shown, (rest, calls) = _split(["```python\n", "print(1)\n", "```"])
    assert shown == ["", "", ""]
    assert rest == "```python\nprint(1)\n```" and calls == []


def test_without_tools_nothing_is_held() -> None:
    stream = ToolStream(())
    assert stream.feed('{"name": "x"}') == '{"name": "x"}'
    assert stream.finish() == ("", [])


@pytest.mark.parametrize(
    ("source", "fmt"),
    [
        ("{% for t in tools %}<tool_call>{% endfor %}", "hermes"),
        ("[TOOL_CALLS] {{ tools }}", "mistral"),
        ("<|python_tag|>{{ tools }}", "llama3"),
        ("{{ tools }}", "generic"),
    ],
)
def test_the_format_comes_from_the_template(source: str, fmt: str) -> None:
    assert tool_format(source) == fmt


def test_a_template_without_tools_refuses_them() -> None:
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(InvalidRequestError, match="does not support tools"):
        template.render([Message("user", "hi")], tools=[ON])


def test_tools_and_history_reach_the_template() -> None:
    source = (
        "{% for t in tools %}[{{ t.function.name }}]{% endfor %}"
        "{% for m in messages %}{{ m.role }}:{{ m.content }}"
        "{% for c in m.tool_calls or [] %}({{ c.function.name }} {{ c.function.arguments.name }})"
        "{% endfor %}{{ m.tool_call_id or '' }};{% endfor %}"
    )
    call = ToolCall("HassTurnOn", '{"name": "Lamp"}', id="call_1")
    text = ChatTemplate(source).render(
        [
            Message("user", "on"),
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", "ok", tool_call_id="call_1"),
        ],
        tools=TOOLS,
    )
    assert text == "[HassLightSet][HassTurnOn]user:on;assistant:(HassTurnOn Lamp);tool:okcall_1;"


@pytest.mark.parametrize("fmt", ["hermes", "mistral", "llama3", "generic"])
@pytest.mark.parametrize("choice", ["auto", "required", "HassLightSet"])
def test_every_grammar_compiles_against_a_real_vocabulary(
    models: dict[str, Path], fmt: str, choice: str
) -> None:
    grammar = tool_grammar(TOOLS, choice, fmt)  # type: ignore[arg-type]
    assert grammar is not None and grammar.lazy == (choice == "auto")
    if choice == "HassLightSet":
        assert '"\\"HassTurnOn\\""' not in grammar.gbnf
    model = lowlevel.load_model(models["tiny"], n_gpu_layers=0, require_template=False)
    try:
        sampler = lowlevel.build_sampler(model, Sampling.greedy(), grammar.gbnf, grammar.triggers)
        lowlevel.free_sampler(sampler)
    finally:
        model.free()


@pytest.mark.parametrize(
    ("generated", "fires"),
    [
        ("{", True),
        ('  {"na', True),
        ('{"name": ', True),
        ("```json\n{", True),
        ("```json\n", False),  # not yet: a fence may hold anything
        ("{}", False),  # the grammar would refuse it: llama.cpp would abort, so never
        ('{"type', False),
        ("```python\n{", False),
        ("Hello {", False),
    ],
)
def test_a_lazy_grammar_starts_only_on_text_it_accepts(generated: str, fires: bool) -> None:
    """llama.cpp matches a ^...$ trigger against the whole reply so far, and replays it from
    the first group into the grammar: a trigger on text the grammar refuses aborts the box."""
    grammar = tool_grammar(TOOLS, "auto", "generic")
    assert grammar is not None
    anchored = [t for t in grammar.triggers if t.startswith("^") and t.endswith("$")]
    assert anchored
    assert any(re.fullmatch(t[1:-1], generated) for t in anchored) == fires


def test_hermes_starts_at_the_tag_after_prose() -> None:
    grammar = tool_grammar(TOOLS, "auto", "hermes")
    assert grammar is not None
    tag = grammar.triggers[0]
    assert not tag.startswith("^")  # searched, since prose may come first
    assert re.search(tag, 'Sure. <tool_call>\n{"name"')
    assert not re.search(tag, "Sure. <tool_call>\n{}")


def test_requests_refuse_tools_they_cannot_honour() -> None:
    hi = (Message("user", "hi"),)
    with pytest.raises(InvalidRequestError, match="not among the tools"):
        ChatRequest(messages=hi, tools=TOOLS, tool_choice="Nope")
    with pytest.raises(InvalidRequestError, match="needs at least one tool"):
        ChatRequest(messages=hi, tool_choice="required")
    with pytest.raises(InvalidRequestError, match="no assistant message made"):
        ChatRequest(messages=(*hi, Message("tool", "{}", tool_call_id="call_9")), tools=TOOLS)
    with pytest.raises(InvalidRequestError, match="not a valid JSON schema"):
        Tool("Broken", parameters={"type": "object", "properties": {"a": {"type": 5}}})
    with pytest.raises(InvalidRequestError, match="must describe an object"):
        Tool("Listy", parameters={"type": "array"})
