"""Ollama's wire shapes as the box accepts and returns them (/api/chat, /api/tags, ...).

Field names follow Ollama's API (docs/api.md and api/types.go of ollama/ollama); every field
Ollama defines is declared, so its clients (the `ollama` package, Home Assistant) pass. What the
box ignores says so in the field's description; anything else, an unknown option included, is a
400 naming it. Durations are nanoseconds, as in Ollama.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from msgspec import UNSET, Meta, Struct, UnsetType, field

from mongars_edge.web.schemas.common import Body, Reply

_IGNORED: Final = "Accepted and ignored."
_I64: Final = 2**63 - 1
MAX_EMBED_INPUTS: Final = 256
MAX_STOP: Final = 16

ModelName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=300,
        description='A model id from /api/tags, or "mongars"; an optional ":latest" tag.',
    ),
]
KeepAlive = Annotated[
    float | str,
    Meta(description="Accepted and ignored: the box keeps its model loaded."),
]
Think = Annotated[
    bool | Literal["low", "medium", "high", "max"],
    Meta(description="Accepted; the box's models do not think aloud, so no `thinking` comes."),
]
Format = Annotated[
    Literal["", "json"] | dict[str, Any],
    Meta(description='"json" (any JSON object) or a JSON schema; sampled to match it.'),
]
Ns = Annotated[int, Meta(ge=0, description="nanoseconds")]

# ---- options ---------------------------------------------------------------------------------


IgnoredInt = Annotated[int, Meta(description=_IGNORED)]
IgnoredFloat = Annotated[float, Meta(description=_IGNORED)]
IgnoredBool = Annotated[bool, Meta(description=_IGNORED)]
IgnoredStr = Annotated[str, Meta(description=_IGNORED)]


class OllamaOptions(Struct, forbid_unknown_fields=True, kw_only=True):
    """Ollama's model options. The sampling ones are used; the runner ones (threads, GPU,
    batch) are the box's own tuning and are ignored; an option Ollama does not define is a 400."""

    temperature: Annotated[float, Meta(ge=0, le=100, description="0 is greedy.")] | None = None
    top_p: Annotated[float, Meta(gt=0, le=1, description="0 is refused.")] | None = None
    top_k: Annotated[int, Meta(ge=0, le=1_000_000, description="0 = off.")] | None = None
    min_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Meta(ge=0.01, le=10)] | None = None
    seed: (
        Annotated[int, Meta(ge=-_I64 - 1, le=_I64, description="Negative: a random seed.")] | None
    ) = None
    num_predict: (
        Annotated[
            int,
            Meta(
                ge=-2,
                le=1_000_000,
                description="The most tokens to write; -1, -2 and 0: the box's reply_max_tokens.",
            ),
        ]
        | None
    ) = None
    stop: Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(max_length=MAX_STOP)] | None = (
        None
    )
    num_ctx: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=10_000_000,
                description="Accepted; the context is the box's (ctx_size), not per request.",
            ),
        ]
        | None
    ) = None
    num_keep: IgnoredInt | None = None
    typical_p: IgnoredFloat | None = None
    tfs_z: IgnoredFloat | None = None
    repeat_last_n: IgnoredInt | None = None
    presence_penalty: IgnoredFloat | None = None
    frequency_penalty: IgnoredFloat | None = None
    mirostat: IgnoredInt | None = None
    mirostat_tau: IgnoredFloat | None = None
    mirostat_eta: IgnoredFloat | None = None
    penalize_newline: IgnoredBool | None = None
    numa: IgnoredBool | None = None
    num_batch: IgnoredInt | None = None
    num_gpu: IgnoredInt | None = None
    main_gpu: IgnoredInt | None = None
    low_vram: IgnoredBool | None = None
    f16_kv: IgnoredBool | None = None
    logits_all: IgnoredBool | None = None
    vocab_only: IgnoredBool | None = None
    use_mmap: IgnoredBool | None = None
    use_mlock: IgnoredBool | None = None
    embedding_only: IgnoredBool | None = None
    num_thread: IgnoredInt | None = None
    draft_num_predict: IgnoredInt | None = None


# ---- messages and tools ----------------------------------------------------------------------


class OllamaCallFunction(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    arguments: Annotated[dict[str, Any], Meta(description="A JSON object (not a string).")] = field(
        default_factory=dict
    )
    index: int | None = None


class OllamaToolCall(Struct, forbid_unknown_fields=True, kw_only=True):
    """A call an assistant message made; without `id` the box numbers it."""

    id: str | None = None
    function: OllamaCallFunction


Role = Literal["system", "user", "assistant", "tool"]


class OllamaMessage(Struct, forbid_unknown_fields=True, kw_only=True):
    """One chat message; a `tool` message answers a call (by `tool_call_id`, else by
    `tool_name`, else the earliest unanswered call)."""

    role: Role
    content: str = ""
    thinking: Annotated[str, Meta(description=_IGNORED)] | None = None
    images: (
        Annotated[list[str], Meta(max_length=0, description="Images are refused (text only).")]
        | None
    ) = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class OllamaFunctionDef(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: Annotated[
        dict[str, Any], Meta(description="The arguments, as a JSON Schema object.")
    ] = field(default_factory=lambda: {"type": "object", "properties": {}})


class OllamaTool(Struct, forbid_unknown_fields=True, kw_only=True):
    type: Literal["function"] = "function"
    items: Annotated[Any, Meta(description=_IGNORED)] | None = None
    function: OllamaFunctionDef


# ---- requests --------------------------------------------------------------------------------


class _Generation(Body, kw_only=True):
    model: ModelName
    stream: Annotated[bool, Meta(description="Default true: NDJSON, one object a line.")] | None = (
        None
    )
    format: Format | None = None
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None
    think: Think | None = None
    truncate: IgnoredBool | None = None
    shift: IgnoredBool | None = None
    logprobs: Annotated[Literal[False], Meta(description="Only false.")] | None = None
    top_logprobs: IgnoredInt | None = None


class OllamaChatRequest(_Generation, kw_only=True):
    """POST /api/chat; no messages loads the model (`done_reason: "load"`)."""

    messages: list[OllamaMessage] = field(default_factory=list)
    tools: list[OllamaTool] | None = None


class OllamaGenerateRequest(_Generation, kw_only=True):
    """POST /api/generate: a prompt (and a system message) answered through the chat
    template; an empty prompt loads the model."""

    prompt: str | None = None
    system: str | None = None
    suffix: (
        Annotated[str, Meta(max_length=0, description="Refused (no fill-in-the-middle).")] | None
    ) = None
    template: (
        Annotated[str, Meta(max_length=0, description="Refused: the model's own template.")] | None
    ) = None
    raw: (
        Annotated[Literal[False], Meta(description="Only false: the model's template applies.")]
        | None
    ) = None
    context: (
        Annotated[list[int], Meta(max_length=0, description="Refused (deprecated in Ollama).")]
        | None
    ) = None
    images: Annotated[list[str], Meta(max_length=0, description="Refused (text only).")] | None = (
        None
    )


EmbedText = Annotated[str, Meta(min_length=1, pattern=r"\S", description="Not only spaces.")]


class OllamaEmbedRequest(Body, kw_only=True):
    """POST /api/embed."""

    model: ModelName
    input: EmbedText | Annotated[list[EmbedText], Meta(min_length=1, max_length=MAX_EMBED_INPUTS)]
    truncate: Annotated[bool, Meta(description="Accepted; inputs are always truncated.")] | None = (
        None
    )
    dimensions: (
        Annotated[int, Meta(ge=1, le=100_000, description="Only the model's own.")] | None
    ) = None
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None


class OllamaEmbeddingsRequest(Body, kw_only=True):
    """POST /api/embeddings (Ollama's older form: one prompt, one vector)."""

    model: ModelName
    prompt: EmbedText
    options: OllamaOptions | None = None
    keep_alive: KeepAlive | None = None


class OllamaShowRequest(Body, kw_only=True):
    """POST /api/show."""

    model: ModelName
    name: (
        Annotated[str, Meta(description="Ollama's older spelling of `model`: ignored.")] | None
    ) = None
    verbose: IgnoredBool | None = None
    system: IgnoredStr | None = None
    template: IgnoredStr | None = None
    options: OllamaOptions | None = None


class OllamaPullRequest(Body, kw_only=True):
    """POST /api/pull (administrators): a catalog model, downloaded with streamed status."""

    model: ModelName
    name: (
        Annotated[str, Meta(description="Ollama's older spelling of `model`: ignored.")] | None
    ) = None
    stream: bool | None = None
    insecure: IgnoredBool | None = None
    username: IgnoredStr | None = None
    password: IgnoredStr | None = None


# ---- replies ---------------------------------------------------------------------------------


class OllamaVersion(Reply, kw_only=True):
    """`version` is the Ollama API level the box follows; `mongars_edge` is its own version."""

    version: str
    mongars_edge: str


class OllamaDetails(Reply, kw_only=True):
    parent_model: str = ""
    format: str = "gguf"
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class OllamaListedModel(Reply, kw_only=True):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaDetails
    capabilities: list[str] | UnsetType = UNSET


class OllamaModelList(Reply, kw_only=True):
    models: list[OllamaListedModel]


class OllamaRunningModel(Reply, kw_only=True):
    name: str
    model: str
    size: int
    digest: str
    details: OllamaDetails
    expires_at: str
    size_vram: int
    context_length: int


class OllamaRunningList(Reply, kw_only=True):
    models: list[OllamaRunningModel]


class OllamaShowReply(Reply, kw_only=True):
    license: str
    modelfile: str
    parameters: str
    template: Annotated[str, Meta(description="The model's Jinja chat template (not Go's).")]
    details: OllamaDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class OllamaOutCall(Reply, kw_only=True):
    name: str
    arguments: dict[str, Any]
    index: int


class OllamaOutToolCall(Reply, kw_only=True):
    id: str
    function: OllamaOutCall


class OllamaOutMessage(Reply, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[OllamaOutToolCall] | UnsetType = UNSET


class OllamaChatChunk(Reply, kw_only=True):
    """One NDJSON line of /api/chat, or the whole reply (`stream: false`). The last one has
    `done: true`, `done_reason` and the counts and durations."""

    model: str
    created_at: str
    message: OllamaOutMessage
    done: bool
    done_reason: str | UnsetType = UNSET
    total_duration: Ns | UnsetType = UNSET
    load_duration: Ns | UnsetType = UNSET
    prompt_eval_count: int | UnsetType = UNSET
    prompt_eval_duration: Ns | UnsetType = UNSET
    eval_count: int | UnsetType = UNSET
    eval_duration: Ns | UnsetType = UNSET


class OllamaGenerateChunk(Reply, kw_only=True):
    """One NDJSON line of /api/generate, or the whole reply."""

    model: str
    created_at: str
    response: str
    done: bool
    done_reason: str | UnsetType = UNSET
    total_duration: Ns | UnsetType = UNSET
    load_duration: Ns | UnsetType = UNSET
    prompt_eval_count: int | UnsetType = UNSET
    prompt_eval_duration: Ns | UnsetType = UNSET
    eval_count: int | UnsetType = UNSET
    eval_duration: Ns | UnsetType = UNSET


class OllamaEmbedReply(Reply, kw_only=True):
    model: str
    embeddings: list[list[float]]
    total_duration: Ns
    load_duration: Ns
    prompt_eval_count: Annotated[int, Meta(description="Words, not tokens.")]


class OllamaEmbeddingReply(Reply, kw_only=True):
    embedding: list[float]


class OllamaProgress(Reply, kw_only=True):
    """One NDJSON line of /api/pull (or, with `stream: false`, the last one)."""

    status: str
    digest: str | UnsetType = UNSET
    total: int | UnsetType = UNSET
    completed: int | UnsetType = UNSET


class OllamaError(Reply, kw_only=True):
    """Ollama's error object: every error of these routes, and a failed stream's last line."""

    error: str
