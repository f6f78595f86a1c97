"""What the box and its split-host child say to each other over their socket pair.

Requests and tokens travel as the mesh's own messages (InferRequest, TokenChunk, End, Error,
Cancel: `mesh/codec.py`, in its frames). The child's first frame is a `HostHello`: the model it
loaded and where its layers live, or why it could not. Pure: bytes in, objects out.
"""

from __future__ import annotations

from typing import Any

import msgspec


class HostHello(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The child's first word: `error` is empty when the model is loaded and serving."""

    error: str = ""
    kind: str = ""
    model_id: str = ""
    path: str = ""
    architecture: str = ""
    n_ctx: int = 0
    n_ctx_train: int = 0
    n_params: int = 0
    size_bytes: int = 0
    chat_template: str = ""
    load_s: float = 0.0
    # What each RPC device reported (name, endpoint, free bytes, total bytes).
    devices: list[tuple[str, str, int, int]] = []


class HostSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the child loads: the model, the workers and the engine's sizing (see EngineConfig)."""

    model_path: str
    model_id: str
    endpoints: list[str]
    n_remote_layers: int
    tensor_split: list[float]
    engine: dict[str, Any]


_HELLO = msgspec.msgpack.Decoder(HostHello)
_SPEC = msgspec.json.Decoder(HostSpec)
_ENC = msgspec.msgpack.Encoder()


def encode_hello(hello: HostHello) -> bytes:
    return _ENC.encode(hello)


def decode_hello(data: bytes) -> HostHello:
    """A HostHello; msgspec.DecodeError for anything else."""
    return _HELLO.decode(data)


def encode_spec(spec: HostSpec) -> str:
    return msgspec.json.encode(spec).decode()


def decode_spec(text: str) -> HostSpec:
    return _SPEC.decode(text)
