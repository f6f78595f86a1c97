"""Wire messages and frames: pure functions, bytes in and objects out, no I/O (fuzzable).

A frame is a 4-byte big-endian length and that many bytes; a frame longer than MAX_FRAME is
refused from its header alone. A message is msgpack `[tag, [field, ...]]`; every field is
type-checked on the way in, so a decoded message is always well-formed. Fields added after a
message first shipped come last and have a default: a message without them still decodes.
"""

from __future__ import annotations

import struct
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Final, Union

import msgpack

from mongars_edge.mesh.errors import CodecError, FrameTooLargeError

PROTOCOL_VERSION: Final = 1
MAX_FRAME: Final = 512 * 1024
CHUNK_SIZE: Final = 256 * 1024
_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size


class Msg:
    """Base of wire messages; subclasses are frozen dataclasses with a unique TAG."""

    TAG: ClassVar[int]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        _register(cls)


_REGISTRY: dict[int, type[Msg]] = {}


def _register(cls: type[Msg]) -> None:
    if cls.TAG in _REGISTRY:
        raise RuntimeError(f"duplicate message tag {cls.TAG}")
    _REGISTRY[cls.TAG] = cls


# --- handshake (clear text; authenticated by signatures) ---------------------------------------


@dataclass(frozen=True)
class HsInit(Msg):
    TAG: ClassVar[int] = 1
    version: int
    purpose: str  # "mesh" or "pair"
    node_id: str
    eph: bytes


@dataclass(frozen=True)
class HsResp(Msg):
    TAG: ClassVar[int] = 2
    version: int
    node_id: str
    eph: bytes
    sig: bytes


@dataclass(frozen=True)
class HsAuth(Msg):
    TAG: ClassVar[int] = 3
    sig: bytes


@dataclass(frozen=True)
class PairStart(Msg):
    TAG: ClassVar[int] = 4
    version: int
    spake: bytes


@dataclass(frozen=True)
class PairReply(Msg):
    TAG: ClassVar[int] = 5
    spake: bytes


@dataclass(frozen=True)
class Sealed(Msg):
    """A SecretBox under the pairing key (the pairing messages below travel inside)."""

    TAG: ClassVar[int] = 6
    box: bytes


@dataclass(frozen=True)
class PairJoin(Msg):
    TAG: ClassVar[int] = 7
    node_id: str
    verify_key: bytes
    name: str


@dataclass(frozen=True)
class PairWelcome(Msg):
    TAG: ClassVar[int] = 8
    node_id: str
    verify_key: bytes
    mesh_id: bytes
    records: list[Any]


# --- session messages (inside the encrypted channel) ------------------------------------------


@dataclass(frozen=True)
class Error(Msg):
    TAG: ClassVar[int] = 20
    stream_id: int
    kind: str
    message: str


@dataclass(frozen=True)
class Telemetry(Msg):
    TAG: ClassVar[int] = 21
    node_id: str
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
    port: int = 0


@dataclass(frozen=True)
class InferRequest(Msg):
    TAG: ClassVar[int] = 22
    stream_id: int
    messages: list[list[str]]
    sampling: dict[str, Any]
    adapter: str | None
    grammar: str | None
    json_schema: dict[str, Any] | None
    assistant_prefix: str
    model: str


@dataclass(frozen=True)
class TokenChunk(Msg):
    TAG: ClassVar[int] = 23
    stream_id: int
    text: str
    token_id: int | None


@dataclass(frozen=True)
class End(Msg):
    TAG: ClassVar[int] = 24
    stream_id: int
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    gen_tok_s: float
    error: str | None


@dataclass(frozen=True)
class Cancel(Msg):
    TAG: ClassVar[int] = 25
    stream_id: int


@dataclass(frozen=True)
class AdapterAnnounce(Msg):
    TAG: ClassVar[int] = 26
    manifest: bytes  # a signed manifest (share.py)


@dataclass(frozen=True)
class ChunkRequest(Msg):
    TAG: ClassVar[int] = 27
    request_id: int
    sha256: str
    index: int  # -1 asks for the signed manifest


@dataclass(frozen=True)
class Chunk(Msg):
    TAG: ClassVar[int] = 28
    request_id: int
    sha256: str
    index: int
    data: bytes


@dataclass(frozen=True)
class Members(Msg):
    TAG: ClassVar[int] = 29
    records: list[Any]


@dataclass(frozen=True)
class Ping(Msg):
    TAG: ClassVar[int] = 30
    sent_at: float


def encode(msg: Msg) -> bytes:
    """The msgpack bytes of a message."""
    values = [getattr(msg, f.name) for f in fields(msg)]  # type: ignore[arg-type]
    out: bytes = msgpack.packb([msg.TAG, values], use_bin_type=True)
    return out


def decode(data: bytes) -> Msg:
    """A message from msgpack bytes; CodecError for anything malformed."""
    if len(data) > MAX_FRAME:
        raise FrameTooLargeError(f"message of {len(data)} bytes exceeds {MAX_FRAME}")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"not msgpack ({type(exc).__name__})") from None
    except Exception as exc:  # msgpack raises a few odd types on garbage
        raise CodecError(f"not msgpack ({type(exc).__name__})") from None
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[1], list)):
        raise CodecError("not a message envelope")
    tag, values = raw
    if not isinstance(tag, int) or isinstance(tag, bool) or tag not in _REGISTRY:
        raise CodecError(f"unknown message type {tag!r}")
    cls = _REGISTRY[tag]
    hints = _hints(cls)
    every = fields(cls)  # type: ignore[arg-type]
    required = sum(1 for f in every if f.default is MISSING)
    names = [f.name for f in every][: len(values)]
    if not required <= len(values) <= len(every):
        raise CodecError(f"{cls.__name__}: {len(values)} fields, expected {len(every)}")
    for name, value in zip(names, values, strict=True):
        if not _conforms(value, hints[name]):
            raise CodecError(f"{cls.__name__}.{name}: unexpected {type(value).__name__}")
    return cls(*values)


_HINTS: dict[type[Msg], dict[str, Any]] = {}


def _hints(cls: type[Msg]) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _conforms(value: object, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float)
    if hint in (str, bytes):
        return isinstance(value, hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_conforms(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _conforms(k, key) and _conforms(v, item) for k, v in value.items()
        )
    return False


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
