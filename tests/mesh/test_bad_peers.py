"""Peers that speak another version or send frames of the wrong type or shape, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import msgspec
import pytest

from mongars_edge.inference.engine import ChatRequest, Sampling, complete
from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import AuthError, PeerUnavailableError, VersionError
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.remote import RemoteEngine, to_wire
from mongars_edge.mesh.service import MeshService
from mongars_edge.mesh.transport import Link, dial, read_frame
from tests.support.env import free_port
from tests.support.mesh import QUESTION, fast_config, until
from tests.support.types import Boxes

OLD = 1  # the protocol of the boxes already in the field
THEIRS_OLD = f"peer speaks mesh protocol {OLD}, this box {codec.PROTOCOL_VERSION}"


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and text in r.message)


def _v1_hello(me: Identity) -> bytes:
    """The first frame a version-1 box sends, built as version 1 built it: by hand."""
    payload = msgpack.packb([1, [OLD, "mesh", me.node_id, bytes(32)]], use_bin_type=True)
    return codec.frame(payload)


async def test_an_old_box_dialling_is_refused_naming_both_versions(
    boxes: Boxes, caplog: pytest.LogCaptureFixture
) -> None:
    old = Identity.generate()
    async with boxes(1, engine=False) as (a,):
        with a.members.changing() as state:
            state.pin(old.node_id, old.verify_key)  # paired: only the version is wrong
        await until(lambda: a.state.key_of(old.node_id) is not None)
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
            writer.write(_v1_hello(old))
            await writer.drain()
            answer = codec.decode(await read_frame(reader, 5.0))
            assert await reader.read() == b""  # and the box closes the connection
            writer.close()
            # What the old box reads: an Error its own decoder takes (same envelope).
            assert isinstance(answer, codec.Error) and answer.kind == "peer_version"
            assert answer.message == f"{THEIRS_OLD}: update the older box"
        assert not a.links
    assert _warnings(caplog, THEIRS_OLD) == 1


@contextlib.asynccontextmanager
async def _old_box(answer: bytes) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A version-1 box that answers every hello with `answer`: its port and the hellos it got."""
    hellos: list[bytes] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            hellos.append(await read_frame(reader, 5.0))
            writer.write(codec.frame(answer))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], hellos
    finally:
        server.close()
        await server.wait_closed()


# What a version-1 box answered a hello of another version with.
V1_REFUSAL = msgpack.packb(
    [20, [0, "peer_auth", "version mismatch: peer speaks protocol 2, we speak 1"]],
    use_bin_type=True,
)


async def test_dialling_an_old_box_names_both_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    me, old = Identity.generate(), Identity.generate()
    pins = {old.node_id: old.verify_key}
    async with _old_box(V1_REFUSAL) as (port, hellos):
        with pytest.raises(AuthError, match="protocol 2, we speak 1"):
            await dial("127.0.0.1", port, me, pins.get)
        # Our hello is one a version-1 box reads (it could refuse us by name).
        assert msgpack.unpackb(hellos[0])[1][:2] == [codec.PROTOCOL_VERSION, "mesh"]
    # A version-1 box that answered the handshake instead: refused here, naming both.
    resp = codec.HsResp(OLD, old.node_id, bytes(32), b"")
    async with _old_box(codec.encode(resp)) as (port, hellos):
        with pytest.raises(VersionError, match=THEIRS_OLD):
            await dial("127.0.0.1", port, me, pins.get)
        # The service dials it again and again (backoff) and says so once.
        config = fast_config(free_port(), [port])
        async with MeshService.open(config, tmp_path, None):
            await until(lambda: len(hellos) >= 3)
    assert _warnings(caplog, THEIRS_OLD) == 1


@contextlib.asynccontextmanager
async def _paired_peer(a: MeshService) -> AsyncIterator[tuple[Link, asyncio.Queue[codec.Msg]]]:
    """A member of `a`'s mesh, linked to it; every message `a` sends it lands in the queue."""
    peer = Identity.generate()
    with a.members.changing() as state:
        state.pin(peer.node_id, peer.verify_key)
    await until(lambda: a.state.key_of(peer.node_id) is not None)
    link = await dial("127.0.0.1", a.port, peer, {a.me.node_id: a.me.verify_key}.get)
    inbox: asyncio.Queue[codec.Msg] = asyncio.Queue()
    reader = asyncio.ensure_future(link.run(lambda _lk, msg: inbox.put_nowait(msg)))
    try:
        await until(lambda: peer.node_id in a.links)
        yield link, inbox
    finally:
        link.close("test over")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _next(inbox: asyncio.Queue[codec.Msg], kind: type[Any], stream_id: int | None) -> Any:
    """The next message of `kind` on `stream_id`, or on any stream for None (telemetry and
    gossip pass by meanwhile)."""
    async with asyncio.timeout(30):
        while True:
            msg = await inbox.get()
            if isinstance(msg, kind) and stream_id in (None, getattr(msg, "stream_id", None)):
                return msg


def _request(stream_id: int, **sampling: object) -> bytes:
    wire = to_wire(ChatRequest.of(QUESTION, sampling=Sampling.greedy(3)), stream_id, "smollm2")
    tag, fields = msgpack.unpackb(codec.encode(wire))
    fields[2].update(sampling)
    return msgspec.msgpack.encode([tag, fields])


async def test_frames_of_the_wrong_type_or_shape_are_refused_and_logged_once(
    boxes: Boxes, caplog: pytest.LogCaptureFixture
) -> None:
    async with boxes(1, n_parallel=1) as (a,), _paired_peer(a) as (link, inbox):
        bad = [
            b"\xc1",  # not msgpack
            msgpack.packb([99, []]),  # no such message
            msgpack.packb([codec.Telemetry.TAG, ["n", "m"]]),  # fields missing
            msgpack.packb([codec.Cancel.TAG, [True]]),  # a bool is no stream id
        ]
        for payload in bad * 2:
            link.writer.write(codec.frame(link.session.seal_bytes(payload)))
        for _ in range(2):  # a message in the wrong place
            link.send(codec.HsInit(codec.PROTOCOL_VERSION, "mesh", "x", bytes(32)))
        # Out-of-range sampling: the request is answered with an error naming the field.
        for sid, field, value in [(1, "temperature", 9.0), (3, "top_p", 0.0), (5, "stop", [""])]:
            link.writer.write(codec.frame(link.session.seal_bytes(_request(sid, **{field: value}))))
            error = await _next(inbox, codec.Error, sid)
            assert error.kind == "bad_message" and f"sampling.{field}" in error.message
        # The link went on: a good request still runs on the box's model.
        good = codec.decode(_request(7))
        assert isinstance(good, codec.InferRequest)
        link.send(good)
        end = await _next(inbox, codec.End, 7)
        assert end.finish_reason == "length" and end.completion_tokens == 3
        assert not link.closed.is_set()
    assert _warnings(caplog, "refused a frame") == 5  # one per kind, each sent twice or more
    assert _warnings(caplog, "ignoring HsInit") == 1


async def test_a_malformed_reply_ends_the_stream_at_once(boxes: Boxes) -> None:
    """A peer answers with a token, then an End of the wrong shape: the stream fails there and
    then (not after the stall limit), and the router would continue locally."""
    async with boxes(1, n_parallel=1) as (a,), _paired_peer(a) as (link, inbox):
        assert a.engine is not None

        async def answer_badly() -> None:
            request = await _next(inbox, codec.InferRequest, None)
            link.send(codec.TokenChunk(request.stream_id, "x", 1))
            end = msgpack.packb([codec.End.TAG, [request.stream_id, 5, 0, 0, 0.0, None]])
            link.writer.write(codec.frame(link.session.seal_bytes(end)))

        [peer_id] = a.links
        peer = RemoteEngine(a.node, peer_id, a.engine, stall_s=600)
        answering = asyncio.ensure_future(answer_badly())
        request = ChatRequest.of(QUESTION, sampling=Sampling.greedy(5))
        with pytest.raises(PeerUnavailableError, match=r"End: .*finish_reason"):
            await complete(peer, request)
        await answering
        assert peer.node_id in a.links  # the link itself goes on
