"""The pure codec and channel: round trips, bounds, fuzzing, tampering and replays."""

from __future__ import annotations

import contextlib

import msgpack
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mongars_edge.inference.engine import Sampling
from mongars_edge.mesh import codec
from mongars_edge.mesh.channel import Initiator, Responder, Session
from mongars_edge.mesh.codec import (
    MAX_FRAME,
    FrameBuffer,
    InferRequest,
    Telemetry,
    TokenChunk,
    WireSampling,
)
from mongars_edge.mesh.errors import (
    AuthError,
    BadMessageError,
    CodecError,
    FrameTooLargeError,
    VersionError,
)
from mongars_edge.mesh.identity import Identity

A = Identity.generate()
B = Identity.generate()
PINS = {A.node_id: A.verify_key, B.node_id: B.verify_key}


def _pair() -> tuple[Session, Session]:
    init = Initiator(A, PINS.get, expect=B.node_id)
    resp = Responder(B, PINS.get)
    hello = init.hello()
    msg = codec.decode(hello)
    assert isinstance(msg, codec.HsInit)
    reply = resp.respond(msg, hello)
    auth, s_a = init.finish(reply)
    s_b = resp.finish(auth)
    return s_a, s_b


TEXT = st.text(max_size=50)
INT64 = st.integers(-(2**63), 2**63 - 1)
SAMPLING = st.builds(
    WireSampling,
    temperature=st.floats(0, 2),
    top_p=st.floats(0.01, 1),
    top_k=st.integers(0, 1000),
    min_p=st.floats(0, 1),
    repeat_penalty=st.floats(0.01, 10),
    seed=st.none() | INT64,
    max_tokens=st.integers(1, 10**6),
    stop=st.lists(st.text(min_size=1, max_size=8), max_size=4).map(tuple),
)
SAMPLES = st.one_of(
    st.builds(TokenChunk, st.integers(0, 2**31), TEXT, st.none() | st.integers(0, 2**31)),
    st.builds(
        InferRequest,
        st.integers(0, 2**31),
        st.lists(st.tuples(TEXT, TEXT), max_size=4),
        SAMPLING,
        st.none() | TEXT,
        st.none() | TEXT,
        st.none(),
        TEXT,
        TEXT,
    ),
    st.builds(
        Telemetry,
        TEXT,
        TEXT,
        st.integers(0, 100),
        st.integers(0, 100),
        st.integers(1, 64),
        st.floats(0, 1e4),
        st.floats(0, 1e4),
        st.floats(-40, 120),
        st.booleans(),
        st.lists(TEXT, max_size=3),
        st.booleans(),
        st.integers(0, 65535),
    ),
)


@given(SAMPLES)
def test_round_trip(msg: codec.Msg) -> None:
    assert codec.decode(codec.encode(msg)) == msg


@given(st.binary(max_size=2000))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_garbage_never_raises_anything_but_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        codec.decode(data)


@given(SAMPLES, st.data())
def test_mutated_messages_decode_or_fail_cleanly(msg: codec.Msg, data: st.DataObject) -> None:
    raw = bytearray(codec.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        out = codec.decode(bytes(raw))
    except CodecError:
        return
    assert isinstance(out, codec.Msg)  # well-typed by construction


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_frame_buffer_reassembles_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(codec.frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    buf = FrameBuffer()
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += buf.feed(stream[prev:cut])
        prev = cut
    assert out == payloads
    assert buf.pending == 0


def test_oversized_frame_refused_from_header() -> None:
    header = (MAX_FRAME + 1).to_bytes(4, "big")
    with pytest.raises(FrameTooLargeError):
        FrameBuffer().feed(header)
    with pytest.raises(FrameTooLargeError):
        codec.frame(b"x" * (MAX_FRAME + 1))
    with pytest.raises(CodecError):
        codec.frame_length(b"\x00\x01")


def test_unknown_type_and_wrong_field_types() -> None:
    import msgpack

    with pytest.raises(CodecError):
        codec.decode(msgpack.packb([999, []]))
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb([23, [True, "x", None]]))  # bool is not a stream id
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb([23, [1, "x"]]))  # missing field


@given(SAMPLES)
@settings(max_examples=30)
def test_sessions_carry_messages_both_ways(msg: codec.Msg) -> None:
    s_a, s_b = _pair()
    assert s_b.open(s_a.seal(msg)) == msg
    assert s_a.open(s_b.seal(msg)) == msg


@given(st.data())
@settings(max_examples=60)
def test_tampered_frames_are_never_accepted(data: st.DataObject) -> None:
    s_a, s_b = _pair()
    sealed = bytearray(s_a.seal(TokenChunk(1, "bonjour", 5)))
    i = data.draw(st.integers(0, len(sealed) - 1))
    sealed[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises((AuthError, CodecError)):
        s_b.open(bytes(sealed))


def test_replays_and_reorders_are_rejected() -> None:
    s_a, s_b = _pair()
    first = s_a.seal(TokenChunk(1, "a", None))
    second = s_a.seal(TokenChunk(1, "b", None))
    assert s_b.open(second) == TokenChunk(1, "b", None)
    with pytest.raises(AuthError, match="replayed"):
        s_b.open(first)  # older counter
    with pytest.raises(AuthError, match="replayed"):
        s_b.open(second)  # same frame again
    # a frame sealed for the other direction does not open
    with pytest.raises(AuthError):
        s_a.open(s_a.seal(TokenChunk(1, "c", None)))


def test_unpaired_and_impostor_peers_get_no_session() -> None:
    stranger = Identity.generate()
    init = Initiator(stranger, {**PINS, stranger.node_id: stranger.verify_key}.get)
    hello = init.hello()
    msg = codec.decode(hello)
    assert isinstance(msg, codec.HsInit)
    with pytest.raises(AuthError, match="not paired"):
        Responder(B, PINS.get).respond(msg, hello)
    # an impostor claiming A's node id cannot sign as A
    fake = Initiator(stranger, PINS.get, expect=B.node_id)
    hello = fake.hello()
    msg = codec.decode(hello)
    assert isinstance(msg, codec.HsInit)
    forged = codec.HsInit(msg.version, msg.purpose, A.node_id, msg.eph)
    resp = Responder(B, PINS.get)
    resp.respond(forged, codec.encode(forged))
    with pytest.raises(AuthError):
        resp.finish(codec.encode(codec.HsAuth(stranger.sign(b"auth" + b"x" * 32))))


def test_wrong_protocol_version_is_refused() -> None:
    init = Initiator(A, PINS.get)
    hello = codec.decode(init.hello())
    assert isinstance(hello, codec.HsInit)
    other = codec.HsInit(99, "mesh", A.node_id, hello.eph)
    with pytest.raises(VersionError, match="protocol 99, this box 2: update the older box"):
        Responder(B, PINS.get).respond(other, codec.encode(other))


def test_responder_impersonation_is_detected() -> None:
    """A box answering for B without B's key fails at the initiator."""
    init = Initiator(A, PINS.get, expect=B.node_id)
    hello = init.hello()
    msg = codec.decode(hello)
    assert isinstance(msg, codec.HsInit)
    mallory = Identity.generate()
    pins = {**PINS, A.node_id: A.verify_key}
    reply = bytearray(Responder(mallory, pins.get).respond(msg, hello))
    resp = codec.decode(bytes(reply))
    assert isinstance(resp, codec.HsResp)
    lie = codec.HsResp(resp.version, B.node_id, resp.eph, resp.sig)
    with pytest.raises(AuthError, match="bad signature"):
        init.finish(codec.encode(lie))


def test_a_message_without_its_newer_trailing_fields_still_decodes() -> None:
    # Telemetry gained `port`, then `split_budget` and `llama_build`; a box that sends none of
    # them is still understood (port 0, offering nothing).
    full = Telemetry("n", "m", 0, 0, 1, 1.0, 1.0, 40.0, False, [], True, 8765)
    tag, values = msgpack.unpackb(codec.encode(full))
    older = codec.decode(msgpack.packb([tag, values[:-3]], use_bin_type=True))
    assert isinstance(older, Telemetry) and older.port == 0 and older.split_budget == 0
    with pytest.raises(CodecError):  # a required field missing is still refused
        codec.decode(msgpack.packb([tag, values[:-4]], use_bin_type=True))
    # Fields it does not know yet are skipped: how a hello of any later version is still read.
    newer = codec.decode(msgpack.packb([tag, [*values, 1]], use_bin_type=True))
    assert newer == full


def test_the_hello_of_protocol_1_still_reads() -> None:
    """Version 1 built its frames by hand with msgpack: its hello must decode here so this box
    can name both versions, and ours must decode there (same envelope, same leading fields)."""
    eph = bytes(range(32))
    v1_hello = msgpack.packb([1, [1, "mesh", A.node_id, eph]], use_bin_type=True)
    assert codec.decode(v1_hello) == codec.HsInit(1, "mesh", A.node_id, eph)
    ours = codec.HsInit(codec.PROTOCOL_VERSION, "mesh", A.node_id, eph)
    assert msgpack.unpackb(codec.encode(ours)) == [1, [2, "mesh", A.node_id, eph]]
    v1_refusal = msgpack.packb([20, [0, "peer_auth", "version mismatch"]], use_bin_type=True)
    assert codec.decode(v1_refusal) == codec.Error(0, "peer_auth", "version mismatch")


def _request(sampling: dict[str, object], stream_id: int = 7) -> bytes:
    fields = [stream_id, [["user", "hi"]], sampling, None, None, None, "", "m"]
    return msgspec.msgpack.encode([InferRequest.TAG, fields])


@pytest.mark.parametrize(
    ("sampling", "named"),
    [
        ({"temperature": 9.0}, "sampling.temperature"),
        ({"top_p": 0.0}, "sampling.top_p"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"stop": [""]}, "sampling.stop"),
        ({"stop": ["x"] * 17}, "sampling.stop"),
        ({"temperature": "hot"}, "sampling.temperature"),
        ({"__class__": 1}, "sampling"),  # no field outside the declared ones
    ],
)
def test_out_of_range_sampling_is_refused_naming_field_and_stream(
    sampling: dict[str, object], named: str
) -> None:
    with pytest.raises(BadMessageError, match=rf"InferRequest: .*{named}") as caught:
        codec.decode(_request(sampling))
    assert caught.value.tag == InferRequest.TAG and caught.value.stream_id == 7


def test_a_request_with_no_sampling_set_gets_the_defaults() -> None:
    msg = codec.decode(_request({}))
    assert isinstance(msg, InferRequest)
    assert codec.sampling_of(msg.sampling) == Sampling()


@given(SAMPLING)
def test_sampling_travels_unchanged(wire: WireSampling) -> None:
    sampling = codec.sampling_of(wire)
    assert codec.wire_sampling(sampling) == wire


def test_refusals_say_what_they_could_read() -> None:
    with pytest.raises(BadMessageError) as caught:
        codec.decode(msgpack.packb([99, []]))
    assert caught.value.tag == 99 and caught.value.stream_id is None
    with pytest.raises(BadMessageError) as caught:
        codec.decode(msgpack.packb([TokenChunk.TAG, [5, b"not text", None]]))
    assert caught.value.stream_id == 5 and "TokenChunk: " in str(caught.value)
    assert "`$[1]`" not in str(caught.value) and "text" in str(caught.value)
    with pytest.raises(BadMessageError) as caught:
        codec.decode(b"\xc1")
    assert caught.value.tag is None


def test_a_forwarded_request_carries_its_tools_and_tool_turns() -> None:
    from mongars_edge.inference.engine import ChatRequest, Message
    from mongars_edge.inference.tools import Tool, ToolCall
    from mongars_edge.mesh.remote import to_wire

    tool = Tool(
        "HassTurnOn", "Turns on", {"type": "object", "properties": {"name": {"type": "string"}}}
    )
    call = ToolCall("HassTurnOn", '{"name": "Kitchen Light"}', id="call_7")
    request = ChatRequest(
        messages=(
            Message("user", "Turn on the kitchen light"),
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", '{"success": true}', tool_call_id="call_7"),
        ),
        tools=(tool,),
        tool_choice="required",
    )
    wire = codec.decode(codec.encode(to_wire(request, 3, "m")))
    assert isinstance(wire, codec.InferRequest)
    assert codec.request_messages(wire) == request.messages
    assert codec.request_tools(wire) == request.tools
    assert wire.tool_choice == "required"


def test_a_forwarded_tool_with_a_broken_schema_is_refused() -> None:
    from mongars_edge.errors import InvalidRequestError

    wire = codec.InferRequest(
        stream_id=1,
        messages=[("user", "hi")],
        sampling=WireSampling(),
        adapter=None,
        grammar=None,
        json_schema=None,
        assistant_prefix="",
        model="m",
        tools=[codec.WireTool("t", "", {"type": "object", "properties": {"a": {"type": 5}}})],
    )
    with pytest.raises(InvalidRequestError):
        codec.request_tools(codec.decode(codec.encode(wire)))  # type: ignore[arg-type]
