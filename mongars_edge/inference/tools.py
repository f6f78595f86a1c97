"""Tool calls: how a model is asked for them, kept to them, and read back.

A request carries tools (name, description, JSON schema of the arguments). The chat template
renders them the model's own way; the reply is then read in the model family's format
(Qwen/Hermes `<tool_call>` tags, Llama 3 JSON, Mistral `[TOOL_CALLS]`), or as bare or fenced
JSON naming a declared tool, which small models write often.

Small models also get a grammar. With `tool_choice` "auto" it is lazy: the model writes what it
wants until a call begins (a tag, a fence, a `{` opening the reply), and from there the call
must name a declared tool with arguments that fit its schema. With "required" or a named
function the whole reply is the call. Arguments are validated against the schema again after
generation, since the grammar converter does not cover every keyword.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mongars_edge.errors import InvalidRequestError
from mongars_edge.inference.errors import GrammarError

ToolFormat = Literal["hermes", "llama3", "mistral", "generic"]

#: What a call may be named: OpenAI's own rule for function names.
_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InvalidRequestError(
                f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'",
                param="tools",
            )
        check_schema(self.name, self.parameters)


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made; `arguments` is a JSON object as text (OpenAI's shape)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def argument_object(self) -> dict[str, Any]:
        try:
            value = json.loads(self.arguments or "{}")
        except json.JSONDecodeError:
            raise InvalidRequestError(
                f"the arguments of the call to {self.name} are not JSON", param="messages"
            ) from None
        if not isinstance(value, dict):
            raise InvalidRequestError(
                f"the arguments of the call to {self.name} must be a JSON object",
                param="messages",
            )
        return value


def check_schema(name: str, schema: Mapping[str, Any]) -> None:
    """Refuse a parameters schema that is not a valid JSON schema for an object."""
    import jsonschema_rs

    if not isinstance(schema, Mapping):
        raise InvalidRequestError(f"tool {name}: parameters must be a JSON schema object")
    kind = schema.get("type", "object")
    if kind != "object":
        raise InvalidRequestError(
            f"tool {name}: parameters must describe an object, not {kind!r}", param="tools"
        )
    try:
        jsonschema_rs.meta.validate(dict(schema))
    except jsonschema_rs.ValidationError as exc:
        raise InvalidRequestError(
            f"tool {name}: parameters are not a valid JSON schema ({exc.message})", param="tools"
        ) from None
    except jsonschema_rs.ReferencingError as exc:
        raise InvalidRequestError(
            f"tool {name}: parameters refer to a schema that cannot be found ({exc})",
            param="tools",
        ) from None


def argument_errors(tool: Tool, arguments: Mapping[str, Any]) -> list[str]:
    """Why `arguments` do not fit the tool's schema (empty when they do)."""
    import jsonschema_rs

    validator = jsonschema_rs.validator_for(dict(tool.parameters))
    return [e.message for e in validator.iter_errors(dict(arguments))]


def template_supports_tools(source: str) -> bool:
    """Whether a chat template renders the `tools` it is given (else they would vanish)."""
    return re.search(r"\btools\b", source) is not None


def tool_format(source: str) -> ToolFormat:
    """The call format a model family's chat template teaches."""
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|python_tag|>" in source or "ipython" in source:
        return "llama3"
    return "generic"


def template_tools(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """Tools as chat templates expect them (OpenAI's shape, as Hugging Face passes them)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters),
            },
        }
        for t in tools
    ]


# --- the grammar --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolGrammar:
    """GBNF for the calls, and when it applies: lazy grammars start at a trigger pattern."""

    gbnf: str
    lazy: bool
    triggers: tuple[str, ...] = ()


def _call_schema(tools: Sequence[Tool], fmt: ToolFormat) -> dict[str, Any]:
    key = "parameters" if fmt == "llama3" else "arguments"
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    key: _grammar_friendly(t.parameters),
                },
                "required": ["name", key],
            }
            for t in tools
        ]
    }


def _grammar_friendly(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema without keywords the GBNF converter cannot express (checked afterwards)."""
    drop = {"$schema", "$id", "title", "examples", "default", "format"}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in drop:
            continue
        if isinstance(value, Mapping):
            out[key] = _grammar_friendly(value)
        elif isinstance(value, list):
            out[key] = [_grammar_friendly(v) if isinstance(v, Mapping) else v for v in value]
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out:
        out.setdefault("additionalProperties", True)
    return out


def tool_grammar(tools: Sequence[Tool], choice: str, fmt: ToolFormat) -> ToolGrammar | None:
    """The grammar for a request's tools; None when the model is free ("none")."""
    if choice == "none" or not tools:
        return None
    chosen = [t for t in tools if t.name == choice] if choice not in ("auto", "required") else tools
    body = json_schema_grammar(_call_schema(chosen, fmt))
    body = re.sub(r"^root ::=", "tc-call ::=", body, flags=re.MULTILINE)
    # Models lay JSON out with newlines and indents; the converter allows one space only.
    body = re.sub(r"^space ::= .*$", "space ::= [ \\t\\n]{0,20}", body, flags=re.MULTILINE)
    ws = "tc-ws ::= [ \\t\\n]*\n"
    if fmt == "hermes":
        forms = ['"<tool_call>" tc-ws tc-call tc-ws "</tool_call>"']
    elif fmt == "mistral":
        forms = ['"[TOOL_CALLS]" tc-ws "[" tc-ws tc-call (tc-ws "," tc-ws tc-call)* tc-ws "]"']
    else:
        forms = []
    forms += ['"```" "json"? tc-ws tc-call tc-ws "```"', "tc-call"]
    one = " | ".join(f"({f})" for f in forms)
    # At most 4 calls: a small model that loops on its call is stopped there.
    root = f"root ::= tc-ws tc-one (tc-ws tc-one){{0,3}} tc-ws\ntc-one ::= {one}\n"
    if choice != "auto":
        return ToolGrammar(root + ws + body, lazy=False)
    return ToolGrammar(root + ws + body, lazy=True, triggers=_triggers(fmt))


#: A prefix of `{"name":`, the only way a call's JSON may begin under the grammar.
_CALL_START: Final = r'\{\s*(?:"(?:n(?:a(?:m(?:e(?:"\s*:?\s*)?)?)?)?)?)?'


def _triggers(fmt: ToolFormat) -> tuple[str, ...]:
    """Where a lazy grammar starts. llama.cpp replays the text from the first group to the end
    of what was generated into the grammar, and aborts the process if the grammar refuses it;
    so each pattern matches (^...$) only while that text is a prefix the grammar accepts: a
    reply that merely opens with `{}` or with JSON of another shape never triggers it."""
    patterns = [f"^\\s*(```(?:json)?\\s*{_CALL_START})$", f"^\\s*({_CALL_START})$"]
    if fmt == "hermes":
        # Searched (no ^): a tag may follow some prose; std::regex recurses on [\s\S]*.
        patterns.insert(0, r"(<tool_call>\s*(?:" + _CALL_START + r")?)$")
    elif fmt == "mistral":
        patterns.insert(0, r"(\[TOOL_CALLS\]\s*(?:\[\s*(?:" + _CALL_START + r")?)?)$")
    return tuple(patterns)


def json_schema_grammar(schema: object) -> str:
    """GBNF for a JSON schema, via llama-cpp-python's converter."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises many kinds
        raise GrammarError(f"cannot turn the JSON schema into a grammar: {exc}") from None


# --- reading calls back -------------------------------------------------------------------

_TAGGED: Final = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCED: Final = re.compile(r"```(?:json|tool_code)?\s*(.*?)\s*```", re.DOTALL)
_MISTRAL: Final = re.compile(r"\[TOOL_CALLS\]\s*(.*)$", re.DOTALL)


def _objects(text: str) -> list[Any]:
    """Every JSON value in `text` that starts at a `{` or `[` (in order, not nested)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except json.JSONDecodeError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def _as_call(value: Any, by_name: Mapping[str, Tool]) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if name is None and isinstance(value.get("function"), dict):  # OpenAI's own shape, echoed
        return _as_call(value["function"], by_name)
    if not isinstance(name, str) or name not in by_name:
        return None  # never a tool that was not declared
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    if argument_errors(by_name[name], args):
        return None
    return ToolCall(name=name, arguments=json.dumps(args, ensure_ascii=False))


def parse_calls(text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
    """(the text that is not a call, the calls) read from a whole reply; a call repeated
    with the same arguments counts once (small models loop)."""
    rest, calls = _parse(text, tools)
    unique: dict[tuple[str, str], ToolCall] = {}
    for call in calls:
        unique.setdefault((call.name, call.arguments), call)
    return rest, list(unique.values())


def _parse(text: str, tools: Sequence[Tool]) -> tuple[str, list[ToolCall]]:
    by_name = {t.name: t for t in tools}
    if not by_name:
        return text, []
    for pattern in (_TAGGED, _MISTRAL, _FENCED):
        spans = list(pattern.finditer(text))
        calls: list[ToolCall] = []
        for m in spans:
            for value in _objects(m.group(1)):
                items = value if isinstance(value, list) else [value]
                calls += [c for c in (_as_call(v, by_name) for v in items) if c is not None]
        if calls:
            rest = pattern.sub("", text)
            return rest.strip(), calls
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        values = _objects(stripped)
        calls = []
        for value in values:
            items = value if isinstance(value, list) else [value]
            calls += [c for c in (_as_call(v, by_name) for v in items) if c is not None]
        if calls:
            return "", calls
    return text, []


def check_choice(choice: str, tools: Sequence[Tool]) -> None:
    if choice in ("auto", "none", "required"):
        if choice == "required" and not tools:
            raise InvalidRequestError(
                "tool_choice 'required' needs at least one tool", param="tool_choice"
            )
        return
    if choice not in {t.name for t in tools}:
        names = ", ".join(t.name for t in tools) or "none"
        raise InvalidRequestError(
            f"tool_choice names {choice!r}, which is not among the tools ({names})",
            param="tool_choice",
        )


def check_history(messages: Sequence[Any]) -> None:
    """Every `tool` message answers a call an earlier assistant message made."""
    calls: set[str] = set()
    for i, m in enumerate(messages):
        for call in getattr(m, "tool_calls", ()):
            calls.add(call.id)
        if m.role == "tool":
            ref = getattr(m, "tool_call_id", None)
            if not ref or ref not in calls:
                raise InvalidRequestError(
                    f"messages[{i}] is a tool result for call {ref!r}, which no assistant "
                    "message made",
                    param=f"messages[{i}].tool_call_id",
                )


def stored_calls(calls: Sequence[ToolCall]) -> str:
    """Calls as the conversation store keeps them (JSON text)."""
    return json.dumps(
        [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
        ensure_ascii=False,
    )


def calls_from_store(text: str | None) -> tuple[ToolCall, ...]:
    if not text:
        return ()
    try:
        rows = json.loads(text)
        return tuple(ToolCall(name=r["name"], arguments=r["arguments"], id=r["id"]) for r in rows)
    except (ValueError, KeyError, TypeError):
        return ()  # a damaged row loses its calls, not the conversation


_MARKERS: Final = ("<tool_call>", "[TOOL_CALLS]")


class ToolStream:
    """Splits a streamed reply into text to show now and calls read at the end.

    Prose is passed on as it comes. What may be a call (a reply opening with JSON or a fence,
    or a call tag) is held back; at the end it becomes calls, or, if it was not one after all,
    text.
    """

    def __init__(self, tools: Sequence[Tool]) -> None:
        self.tools = tuple(tools)
        self._text = ""
        self._sent = 0
        self._held_from: int | None = None

    def feed(self, piece: str) -> str:
        """Text that can be shown now."""
        self._text += piece
        if not self.tools or self._held_from is not None:
            return self._flush(len(self._text)) if not self.tools else ""
        if self._sent == 0 and self._text.strip() == "":
            return ""
        if self._sent == 0 and self._text.lstrip()[:1] in ("{", "[", "`"):
            self._held_from = 0
            return ""
        unsent = self._text[self._sent :]
        at = min((i for i in (unsent.find(m) for m in _MARKERS) if i >= 0), default=-1)
        if at >= 0:
            self._held_from = self._sent + at
            return self._flush(self._held_from)
        keep = max(
            (n for m in _MARKERS for n in range(1, len(m)) if unsent.endswith(m[:n])), default=0
        )
        return self._flush(len(self._text) - keep)

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the text still to show, the calls) once the reply is complete."""
        start = self._sent if self._held_from is None else self._held_from
        rest = self._text[start:]
        self._sent = len(self._text)
        if self._held_from is None or not self.tools:
            return rest, []
        text, calls = parse_calls(rest, self.tools)
        return (text if calls else rest), calls

    def _flush(self, upto: int) -> str:
        out = self._text[self._sent : upto]
        self._sent = max(self._sent, upto)
        return out
