"""The native API's shapes (/api/*, /health): accounts, conversations, memories, the box."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, UnsetType

from mongars_edge.web.schemas.common import Body, Id, Query, Reply
from mongars_edge.web.schemas.openai import ModelCard

# The store's own limits (mongars_edge.memory.validate), declared here for the wire.
MAX_TEXT = 4 * 1024 * 1024
Password = Annotated[str, Meta(min_length=8, max_length=1024, description="8 to 1024 characters")]
# Letters (Latin-1 included), digits and . _ @ + - with inner spaces: printable by construction,
# which the store requires, and what a schema checker can verify.
_NAME_CHAR = "-A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff._@+"
# The built-in `console` administrator's and `voice` user's names, in any case
# (mongars_edge.web.auth.check_name).
_RESERVED = "(?![Cc][Oo][Nn][Ss][Oo][Ll][Ee]$)(?![Vv][Oo][Ii][Cc][Ee]$)"
UserName = Annotated[
    str,
    Meta(
        pattern=f"^{_RESERVED}[{_NAME_CHAR}]([{_NAME_CHAR} ]{{0,62}}[{_NAME_CHAR}])?$",
        description="1 to 64 letters, digits, spaces inside, or . _ @ + -; not `console` (the "
        "box's own administrator) or `voice` (the Wyoming conversation agent's user)",
    ),
]
Kind = Literal["fact", "preference", "summary"]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
MemoryText = Annotated[
    str, Meta(max_length=MAX_TEXT, pattern=r"[^\s\x00]", description="Not only spaces.")
]

# ---- session, setup, login -------------------------------------------------------------------


class PublicUser(Reply, kw_only=True):
    id: int
    name: str
    is_admin: bool
    created: float


class SessionInfo(Reply, kw_only=True):
    """Who is signed in (null: nobody), the session's CSRF token, whether setup is pending."""

    user: PublicUser | None
    csrf: str | None
    setup_required: bool


class SetupRequest(Body, kw_only=True):
    """The console's one-time code creates the first administrator, then signs in."""

    code: Annotated[str, Meta(description="XXXX-XXXX, from the console or the journal")]
    name: UserName
    password: Password


class LoginRequest(Body, kw_only=True):
    name: str
    password: str


# ---- conversations ---------------------------------------------------------------------------


class NewConversation(Body, kw_only=True):
    title: Annotated[Text, Meta(description="Cut to 200 characters.")] = ""


class Rename(Body, kw_only=True):
    title: Annotated[Text, Meta(description="Cut to 200 characters.")]


class Page(Query, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=500)] = 50
    offset: Annotated[int, Meta(ge=0, le=2**62)] = 0


class Conversation(Reply, kw_only=True):
    id: int
    user_id: int
    title: str
    created: float
    updated: float


class ConversationList(Reply, kw_only=True):
    data: list[Conversation]


class StoredMessage(Reply, kw_only=True):
    id: int
    conversation_id: int
    user_id: int
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tokens: int | None
    model: str | None
    adapter: str | None
    latency_ms: int | None
    status: Literal["complete", "partial", "error"]
    created: float
    tool_calls: (
        Annotated[str, Meta(description="An assistant's tool calls, as JSON text.")] | None
    ) = None
    tool_call_id: Annotated[str, Meta(description="The call a tool result answers.")] | None = None


class ConversationExport(Conversation, kw_only=True):
    """A conversation with its messages, oldest first."""

    messages: list[StoredMessage]


# ---- memories --------------------------------------------------------------------------------


class NewMemory(Body, kw_only=True):
    text: MemoryText
    kind: Kind = "fact"


class MemoryPage(Query, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=500)] = 100
    offset: Annotated[int, Meta(ge=0, le=2**62)] = 0
    kind: Kind | None = None


class SearchQuery(Query, kw_only=True):
    q: Annotated[str, Meta(max_length=200)] = ""
    limit: Annotated[int, Meta(ge=1, le=100)] = 8


class MemoryRecord(Reply, kw_only=True):
    id: int
    user_id: int
    text: str
    kind: Kind
    source_message_ids: list[int]
    importance: float
    created: float
    updated: float
    embedded: bool


class MemoryList(Reply, kw_only=True):
    data: list[MemoryRecord]


class SearchHit(Reply, kw_only=True):
    source: Annotated[str, Meta(description="memory or message")]
    id: int
    text: str
    kind: str | None
    conversation_id: int | None
    score: float


class SearchResults(Reply, kw_only=True):
    data: list[SearchHit]


class UserExport(Reply, kw_only=True):
    """Everything the box holds about you: account, tokens (no secrets), conversations with
    their messages, memories (no vectors)."""

    format: Any
    exported: float
    user: PublicUser
    tokens: list[TokenRecord]
    conversations: list[ConversationExport]
    memories: list[MemoryRecord]


# ---- users and tokens ------------------------------------------------------------------------


class NewUser(Body, kw_only=True):
    name: UserName
    password: Password
    is_admin: bool = False


class UserList(Reply, kw_only=True):
    data: list[PublicUser]


class NewToken(Body, kw_only=True):
    name: Annotated[str, Meta(description="Cut to 64 characters.")] = "api"


class TokenRecord(Reply, kw_only=True):
    id: int
    user_id: int
    name: str
    created: float
    last_used: float | None
    revoked: float | None


class CreatedToken(TokenRecord, kw_only=True):
    token: Annotated[str, Meta(description="The secret, shown this once.")]


class TokenList(Reply, kw_only=True):
    data: list[TokenRecord]


# ---- the box ---------------------------------------------------------------------------------


class Health(Reply, kw_only=True):
    """Liveness and self-description. `data_dir` only for a client on the same machine."""

    status: Literal["ok", "degraded"]
    version: str
    model: Annotated[str | None, Meta(description="The model answering now.")]
    model_setting: str
    split: Annotated[
        dict[str, Any] | None,
        Meta(description="A model split across boxes: which layers live where (docs/split.md)."),
    ] = None
    uptime_s: float
    board: str
    profile: dict[str, Any]
    speech: dict[str, Any]
    onnx: Annotated[
        dict[str, Any],
        Meta(description="ONNX providers: wanted, present, and what each model runs on."),
    ]
    problems: list[Any]
    data_dir: str | UnsetType = UNSET


class Hardware(Reply, kw_only=True):
    facts: dict[str, Any]
    profile: dict[str, Any]


class ChatModelInfo(Reply, kw_only=True):
    id: str
    architecture: str
    n_ctx: int
    n_params: int
    size_bytes: int


class EngineLoad(Reply, kw_only=True):
    queue_depth: int
    active: int
    n_parallel: int
    generation_tok_s: float


class ModelsOverview(Reply, kw_only=True):
    """What answers now (`chat`, `load`), the profile's choice, and every catalog model with
    `installed`, `loaded`, `recommended` and a download's `pull` state."""

    data: list[ModelCard]
    chat: ChatModelInfo | None
    load: EngineLoad | None
    recommended: str | None
    catalog: list[dict[str, Any]]


class ModelChoice(Body, kw_only=True):
    model: Annotated[str, Meta(description="A catalog id (or, to load, a GGUF path).")]


class PullRequest(Body, kw_only=True):
    model: Annotated[str, Meta(description="A catalog id.")]
    load: Annotated[bool, Meta(description="Load it once it is whole.")] = False


class PullState(Reply, kw_only=True):
    id: str
    state: str
    done_bytes: int
    total_bytes: int | None
    percent: float | None
    error: str | None


class Loaded(Reply, kw_only=True):
    loaded: str


class AdapterList(Reply, kw_only=True):
    data: list[dict[str, Any]]


class PeersReport(Reply, kw_only=True):
    """The mesh report (`mongars-edge peers`); the peers are `data`."""

    node_id: str | None
    data: list[dict[str, Any]]


class PairRequest(Body, kw_only=True):
    code: Annotated[str, Meta(description="The code a member shows (`mongars-edge pair`).")]
    peer: Annotated[str, Meta(description="HOST:PORT; default: every unpaired box seen.")] = ""


class Paired(Reply, kw_only=True):
    joined_through: Any
    node_id: str


ModelId = Annotated[str, Meta(description="a model id")]
NodeId = Annotated[str, Meta(description="a node id, or a unique prefix of one")]
__all__ = ["Id"]
