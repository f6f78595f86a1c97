"""Wire messages and frames: pure functions, bytes in and objects out, no I/O (fuzzable).

A frame is a 4-byte big-endian length and that many bytes; a frame longer than MAX_FRAME is
refused from its header alone. A message is msgpack `[tag, [field, ...]]`: every message is a
msgspec Struct with a unique TAG and declared ranges, so a decoded message is always
well-formed and in range, and anything else is a BadMessageError naming the field.

The envelope and the leading fields of HsInit, HsResp, PairStart and Error never change (new
fields are only appended, and decoders ignore trailing fields they do not know): boxes of any
two protocol versions can still read each other's hello and refuse each other by name.
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal

import msgspec

from mongars_edge.mesh.errors import BadMessageError, CodecError, FrameTooLargeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mongars_edge.inference.engine import Message, Sampling, TokenEvent
    from mongars_edge.inference.tools import Tool

#: 2: msgspec-typed messages with declared ranges; a Sampling struct instead of a free dict.
PROTOCOL_VERSION: Final = 2
MAX_FRAME: Final = 512 * 1024
CHUNK_SIZE: Final = 256 * 1024
_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size

_U32 = msgspec.Meta(ge=0, le=2**32 - 1)
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
StreamId = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
NodeId = Annotated[str, msgspec.Meta(max_length=64)]
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Short = Annotated[str, msgspec.Meta(max_length=256)]
Version = Annotated[int, _U32]
#: A signed membership record as it travels: mesh id, subject, subject key, action, issued at,
#: signer, signature (members.MemberRecord checks the signature).
WireRecord = tuple[bytes, NodeId, Key32, Literal["add", "revoke"], float, NodeId, bytes]
Records = Annotated[list[WireRecord], msgspec.Meta(max_length=1024)]


def version_problem(theirs: int, ours: int = PROTOCOL_VERSION) -> str:
    """What a user reads when a peer speaks another protocol version."""
    return f"peer speaks mesh protocol {theirs}, this box {ours}: update the older box"


class Msg(msgspec.Struct, array_like=True, frozen=True):
    """Base of wire messages; every subclass has a unique TAG."""

    TAG: ClassVar[int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TAG in _REGISTRY:
            raise RuntimeError(f"duplicate message tag {cls.TAG}")
        _REGISTRY[cls.TAG] = cls


_REGISTRY: dict[int, type[Msg]] = {}


# --- handshake (clear text; authenticated by signatures) ---------------------------------------


class HsInit(Msg, frozen=True):
    TAG: ClassVar[int] = 1
    version: Version
    purpose: Literal["mesh", "pair"]
    node_id: NodeId
    eph: Key32


class HsResp(Msg, frozen=True):
    TAG: ClassVar[int] = 2
    version: Version
    node_id: NodeId
    eph: Key32
    sig: Annotated[bytes, msgspec.Meta(max_length=64)]


class HsAuth(Msg, frozen=True):
    TAG: ClassVar[int] = 3
    sig: Annotated[bytes, msgspec.Meta(max_length=64)]


class PairStart(Msg, frozen=True):
    TAG: ClassVar[int] = 4
    version: Version
    spake: Annotated[bytes, msgspec.Meta(max_length=1024)]


class PairReply(Msg, frozen=True):
    TAG: ClassVar[int] = 5
    spake: Annotated[bytes, msgspec.Meta(max_length=1024)]


class Sealed(Msg, frozen=True):
    """A SecretBox under the pairing key (the pairing messages below travel inside)."""

    TAG: ClassVar[int] = 6
    box: bytes


class PairJoin(Msg, frozen=True):
    TAG: ClassVar[int] = 7
    node_id: NodeId
    verify_key: Key32
    name: Short


class PairWelcome(Msg, frozen=True):
    TAG: ClassVar[int] = 8
    node_id: NodeId
    verify_key: Key32
    mesh_id: bytes
    records: Records


# --- session messages (inside the encrypted channel) ------------------------------------------


class Error(Msg, frozen=True):
    TAG: ClassVar[int] = 20
    stream_id: StreamId
    kind: Short
    message: str


class Telemetry(Msg, frozen=True):
    TAG: ClassVar[int] = 21
    node_id: NodeId
    model: str
    queue_depth: int
    active: int
    n_parallel: int
    gen_tok_s: float
    prompt_tok_s: float
    temp_c: float
    throttled: bool
    adapters: list[str]
    accepting: bool
    #: The port this box's mesh listens on (0: not said), so that a box it dialled can dial
    #: it back: the source port of a dialled connection is not the listening port.
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    #: What this box offers for a model split across boxes: bytes its RPC worker holds (0: it
    #: offers none), and the llama.cpp build with its RPC protocol (`tunnel.llama_build`; a
    #: host refuses a worker of another build).
    split_budget: Annotated[int, msgspec.Meta(ge=0, le=2**53)] = 0
    llama_build: Short = ""


class WireSampling(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A forwarded request's sampling, in the ranges the HTTP API accepts (`sampling_of`)."""

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 0.7
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.95
    top_k: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 40
    min_p: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    repeat_penalty: Annotated[float, msgspec.Meta(gt=0, le=10)] = 1.0
    seed: int | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 512
    stop: Annotated[
        tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=1000)], ...],
        msgspec.Meta(max_length=16),
    ] = ()


def wire_sampling(sampling: Sampling) -> WireSampling:
    """A request's sampling as it travels."""
    return WireSampling(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        min_p=sampling.min_p,
        repeat_penalty=sampling.repeat_penalty,
        seed=sampling.seed,
        max_tokens=sampling.max_tokens,
        stop=sampling.stop,
    )


def tool_turns(messages: Sequence[Message]) -> list[WireToolTurn]:
    return [
        WireToolTurn(i, [WireCall(c.id, c.name, c.arguments) for c in m.tool_calls], m.tool_call_id)
        for i, m in enumerate(messages)
        if m.tool_calls or m.tool_call_id is not None
    ]


def request_messages(msg: InferRequest) -> tuple[Message, ...]:
    """The forwarded messages, with their tool calls and results."""
    from mongars_edge.inference.engine import Message
    from mongars_edge.inference.tools import ToolCall

    extra = {t.index: t for t in msg.tool_turns}
    out = []
    for i, (role, content) in enumerate(msg.messages):
        turn = extra.get(i)
        calls = (
            tuple(ToolCall(name=c.name, arguments=c.arguments, id=c.id) for c in turn.calls)
            if turn
            else ()
        )
        out.append(
            Message(role, content, tool_calls=calls, tool_call_id=turn.call_id if turn else None)
        )
    return tuple(out)


def request_tools(msg: InferRequest) -> tuple[Tool, ...]:
    """The forwarded tools, checked again (a peer's schema is not trusted)."""
    from mongars_edge.inference.tools import Tool

    return tuple(Tool(t.name, t.description, t.parameters) for t in msg.tools)


def sampling_of(wire: WireSampling) -> Sampling:
    """The only way a peer's sampling becomes this box's (InvalidRequestError if it does not
    hold together)."""
    from mongars_edge.inference.engine import Sampling

    return Sampling(
        temperature=wire.temperature,
        top_p=wire.top_p,
        top_k=wire.top_k,
        min_p=wire.min_p,
        repeat_penalty=wire.repeat_penalty,
        seed=wire.seed,
        max_tokens=wire.max_tokens,
        stop=wire.stop,
    )


class WireCall(msgspec.Struct, array_like=True, frozen=True):
    """A tool call an assistant message made (arguments as JSON text)."""

    id: Short
    name: Short
    arguments: str


class WireToolTurn(msgspec.Struct, array_like=True, frozen=True):
    """What message `index` carries besides its role and text: its calls, or the call it
    answers."""

    index: Annotated[int, msgspec.Meta(ge=0, le=4095)]
    calls: Annotated[list[WireCall], msgspec.Meta(max_length=64)] = []
    call_id: Short | None = None


class WireTool(msgspec.Struct, array_like=True, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern="^[A-Za-z0-9_-]{1,64}$")]
    description: str
    parameters: dict[str, Any]


class InferRequest(Msg, frozen=True):
    TAG: ClassVar[int] = 22
    stream_id: StreamId
    messages: Annotated[list[tuple[Short, str]], msgspec.Meta(max_length=4096)]
    sampling: WireSampling
    adapter: Short | None
    grammar: str | None
    json_schema: dict[str, Any] | None
    assistant_prefix: str
    model: Short
    # Appended (older decoders skip them): the tools a forwarded request carries.
    tools: Annotated[list[WireTool], msgspec.Meta(max_length=128)] = []
    tool_choice: Short = "auto"
    tool_turns: Annotated[list[WireToolTurn], msgspec.Meta(max_length=4096)] = []


class TokenChunk(Msg, frozen=True):
    TAG: ClassVar[int] = 23
    stream_id: StreamId
    text: str
    token_id: Annotated[int, _U32] | None


class End(Msg, frozen=True):
    TAG: ClassVar[int] = 24
    stream_id: StreamId
    finish_reason: Short
    prompt_tokens: Count
    completion_tokens: Count
    gen_tok_s: float
    error: str | None


def end_of(sid: int, event: TokenEvent) -> End:
    """The End message of a stream whose engine finished with `event`."""
    usage, timings = event.usage, event.timings
    return End(
        sid,
        event.finish_reason or "stop",
        usage.prompt_tokens if usage else 0,
        usage.completion_tokens if usage else 0,
        timings.generation_tok_s if timings else 0.0,
        event.error,
    )


class Cancel(Msg, frozen=True):
    TAG: ClassVar[int] = 25
    stream_id: StreamId


class AdapterAnnounce(Msg, frozen=True):
    TAG: ClassVar[int] = 26
    manifest: bytes  # a signed manifest (share.py)


class ChunkRequest(Msg, frozen=True):
    TAG: ClassVar[int] = 27
    request_id: StreamId
    sha256: Annotated[str, msgspec.Meta(max_length=64)]
    index: Annotated[int, msgspec.Meta(ge=-1, le=2**31 - 1)]  # -1 asks for the signed manifest


class Chunk(Msg, frozen=True):
    TAG: ClassVar[int] = 28
    request_id: StreamId
    sha256: Annotated[str, msgspec.Meta(max_length=64)]
    index: Annotated[int, msgspec.Meta(ge=-1, le=2**31 - 1)]
    data: bytes


class Members(Msg, frozen=True):
    TAG: ClassVar[int] = 29
    records: Records


class Ping(Msg, frozen=True):
    TAG: ClassVar[int] = 30
    sent_at: float


# --- llama.cpp RPC streams (tunnel.py) ------------------------------------------------------------

#: The most bytes one RpcData carries: a token or a telemetry message queued behind a stream
#: waits for about this much more. 64, 128 and 256 KiB moved weights equally fast
#: (bench/tunnel.py: the cost is per byte, sealing and copying).
RPC_CHUNK: Final = 64 * 1024


class RpcOpen(Msg, frozen=True):
    """Open a stream to the receiver's llama.cpp RPC worker (ids as for requests)."""

    TAG: ClassVar[int] = 31
    stream_id: StreamId


class RpcData(Msg, frozen=True):
    """Bytes of a stream, in order; never more than the receiver's credit allows."""

    TAG: ClassVar[int] = 32
    stream_id: StreamId
    data: Annotated[bytes, msgspec.Meta(min_length=1, max_length=RPC_CHUNK)]


class RpcClose(Msg, frozen=True):
    """The stream is over: empty reason for an end of stream, else why it was ended."""

    TAG: ClassVar[int] = 33
    stream_id: StreamId
    reason: Annotated[str, msgspec.Meta(max_length=1000)]


class RpcCredit(Msg, frozen=True):
    """The receiver's local socket took `grant` more bytes: the sender may send that many more."""

    TAG: ClassVar[int] = 34
    stream_id: StreamId
    grant: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


_DECODERS: Final = {tag: msgspec.msgpack.Decoder(cls) for tag, cls in _REGISTRY.items()}
_ENVELOPE: Final = msgspec.msgpack.Decoder(tuple[int, msgspec.Raw])
_ENCODER: Final = msgspec.msgpack.Encoder()
_FIELD = re.compile(r"\$\[(\d+)\]")
# Whose first field is a stream id (or a chunk request id): a refusal can name the stream.
_STREAMED: Final = frozenset({20, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34})


class _Head(msgspec.Struct, array_like=True):
    first: StreamId


_HEAD: Final = msgspec.msgpack.Decoder(_Head)


def encode(msg: Msg) -> bytes:
    """The msgpack bytes of a message."""
    return _ENCODER.encode((msg.TAG, msg))


def decode(data: bytes) -> Msg:
    """A message from msgpack bytes; BadMessageError for anything malformed or out of range."""
    if len(data) > MAX_FRAME:
        raise FrameTooLargeError(f"message of {len(data)} bytes exceeds {MAX_FRAME}")
    try:
        tag, body = _ENVELOPE.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadMessageError(f"not a message envelope ({exc})") from None
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise BadMessageError(f"unknown message type {tag}", tag=tag)
    try:
        msg: Msg = decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        cls = _REGISTRY[tag]
        raise BadMessageError(
            f"{cls.__name__}: {_explain(cls, str(exc))}", tag=tag, stream_id=_stream_of(tag, body)
        ) from None
    return msg


def _explain(cls: type[Msg], text: str) -> str:
    """msgspec's `... - at `$[2].temperature`` with the field's name instead of its index."""
    names = cls.__struct_fields__

    def name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return names[i] if i < len(names) else m.group(0)

    return _FIELD.sub(name, text, count=1)


def _stream_of(tag: int, body: msgspec.Raw) -> int | None:
    if tag not in _STREAMED:
        return None
    try:
        return _HEAD.decode(body).first
    except (msgspec.DecodeError, RecursionError):
        return None


def frame(payload: bytes) -> bytes:
    """Length-prefix `payload`; CodecError if it is over the limit (a bug on our side)."""
    if len(payload) > MAX_FRAME:
        raise FrameTooLargeError(f"refusing to send a {len(payload)}-byte frame")
    return _HEADER.pack(len(payload)) + payload


def frame_length(header: bytes) -> int:
    """The payload length announced by a 4-byte header; FrameTooLargeError over the limit."""
    if len(header) != HEADER_SIZE:
        raise CodecError("truncated frame header")
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameTooLargeError(f"peer announced a {length}-byte frame (limit {MAX_FRAME})")
    return int(length)


class FrameBuffer:
    """Splits a byte stream into frames (for fuzzing and non-stream transports)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Frames completed by `data`; FrameTooLargeError as soon as a header is over the limit."""
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER_SIZE:
            length = frame_length(bytes(self._buf[:HEADER_SIZE]))
            if len(self._buf) < HEADER_SIZE + length:
                break
            out.append(bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length]))
            del self._buf[: HEADER_SIZE + length]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)
