"""llama.cpp RPC through the mesh: real paired services on loopback, the real sandboxed worker
(RpcWorker) and the real guard (RpcGuard), and a real RPC client speaking protocol 7."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import struct
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgpack
import pytest

from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import AuthError, CodecError, MeshError, SplitVersionError
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.service import MeshService
from mongars_edge.mesh.transport import dial
from mongars_edge.mesh.tunnel import WINDOW, llama_build
from mongars_edge.split.rpcwire import RPC_PROTO, Cmd
from mongars_edge.split.worker import RpcWorker
from mongars_edge.split.worker_child import PORT
from tests.support.env import free_port
from tests.support.mesh import fast_config, pair, settled, until
from tests.support.rpc import RpcClient, request, tensor

# Links live through a starved test process (a busy CI box): a dropped link ends RPC streams.
Mesh = Callable[..., contextlib.AbstractAsyncContextManager[list[MeshService]]]


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    """Factory: `async with mesh(0, 128) as (a, b)`: one unpaired box per memory offer (MB)."""

    @contextlib.asynccontextmanager
    async def factory(*offers: int, **kwargs: object) -> AsyncIterator[list[MeshService]]:
        ports = [free_port() for _ in offers]
        async with contextlib.AsyncExitStack() as stack:
            out = []
            for i, mb in enumerate(offers):
                data = tmp_path / f"box{i}"
                data.mkdir()
                others = [p for j, p in enumerate(ports) if j != i]
                config = fast_config(ports[i], others, split_offer_mb=mb, idle_timeout_s=10.0)
                service = MeshService.open(config, data, None, **kwargs)  # type: ignore[arg-type]
                out.append(await stack.enter_async_context(service))
            yield out

    return factory


async def linked(a: MeshService, b: MeshService) -> str:
    """Pair `b` with `a` and wait until `a` sees the memory `b` offers; b's node id."""
    await pair(a, b)
    await settled(a, b)
    bid = b.me.node_id

    def offered() -> bool:
        peer = a.peers.get(bid)
        t = peer.telemetry if peer is not None else None
        return t is not None and t.split_budget > 0

    await until(offered)
    return bid


def worker_of(box: MeshService) -> RpcWorker:
    worker = box.tunnel.worker
    assert isinstance(worker, RpcWorker)
    return worker


def refusals(caplog: pytest.LogCaptureFixture, peer: str) -> list[str]:
    return [
        str(getattr(r, "reason", ""))
        for r in caplog.records
        if r.name == "mongars_edge.mesh.tunnel" and getattr(r, "peer", None) == peer
    ]


# --- the wire -------------------------------------------------------------------------------


def test_rpc_messages_round_trip_and_are_bounded() -> None:
    for msg in (
        codec.RpcOpen(3),
        codec.RpcData(3, b"\x0e" * codec.RPC_CHUNK),
        codec.RpcClose(3, "refused"),
        codec.RpcCredit(3, WINDOW),
    ):
        assert codec.decode(codec.encode(msg)) == msg
        sealed = len(codec.encode(msg)) + 8 + 16
        assert sealed <= codec.MAX_FRAME
    too_big = msgpack.packb([codec.RpcData.TAG, [5, b"x" * (codec.RPC_CHUNK + 1)]])
    with pytest.raises(CodecError, match="RpcData") as info:
        codec.decode(too_big)
    assert info.value.stream_id == 5  # type: ignore[attr-defined]
    with pytest.raises(CodecError, match="RpcCredit"):
        codec.decode(msgpack.packb([codec.RpcCredit.TAG, [5, 0]]))


def test_telemetry_of_a_box_without_splitting_still_decodes() -> None:
    ours = codec.Telemetry("n", "m", 0, 0, 1, 1.0, 1.0, 40.0, False, [], True, 8765, 1 << 30, "b")
    tag, values = msgpack.unpackb(codec.encode(ours))
    older = codec.decode(msgpack.packb([tag, values[:-2]], use_bin_type=True))
    assert isinstance(older, codec.Telemetry)
    assert (older.split_budget, older.llama_build, older.port) == (0, "", 8765)


def test_llama_build_names_the_library_and_the_rpc_protocol() -> None:
    build = llama_build()
    assert build.startswith("llama-cpp-python ")
    assert build.endswith(" rpc {}.{}.{}".format(*RPC_PROTO))
    assert " ggml " in build


# --- real boxes -----------------------------------------------------------------------------


async def test_bytes_round_trip_intact_through_the_encrypted_tunnel(mesh: Mesh) -> None:
    async with mesh(0, 128) as (a, b):
        bid = await linked(a, b)
        # One listener per peer, however many ask at once.
        endpoints = set(await asyncio.gather(*(a.rpc_endpoint(bid) for _ in range(3))))
        assert len(endpoints) == 1
        endpoint = endpoints.pop()
        assert endpoint.startswith("127.0.0.1:")
        assert await a.rpc_endpoint(bid) == endpoint
        client = await RpcClient.connect(endpoint)
        try:
            assert await client.hello() == RPC_PROTO
            size = 12 << 20  # windows' worth: credit has to come back many times each way
            buffer, base = await client.alloc(size)
            payload = random.Random(16).randbytes(size)
            t = tensor(buffer, base, size)
            await client.set_tensor(t, 0, payload)
            assert await client.get_tensor(t, 0, size) == payload
            assert await client.get_tensor(t, size - 4096, 4096) == payload[-4096:]
        finally:
            client.close()
        # The next connection is a new stream (the worker serves one client at a time).
        again = await RpcClient.connect(endpoint)
        assert await again.hello() == RPC_PROTO
        again.close()
        assert a.peers[bid].fresh()  # telemetry kept flowing beside the weights


@pytest.mark.parametrize(
    ("forge", "refused"),
    [
        (lambda buf, base: request(99, b""), "unknown RPC command 99"),
        (
            lambda buf, base: request(
                Cmd.GET_TENSOR, tensor(buf, base, 4096) + struct.pack("<QQ", 8192, 16)
            ),
            "outside the tensor",
        ),
        (
            lambda buf, base: request(
                Cmd.SET_TENSOR, tensor(buf, base + (2 << 20), 4096) + bytes(9) + bytes(4096)
            ),
            "outside its buffer",
        ),
        (
            lambda buf, base: request(
                Cmd.GRAPH_COMPUTE,
                struct.pack("<IIQI", 0, 1, 1, 1) + tensor(buf, base, 4096, op="CUSTOM"),
            ),
            "CUSTOM is not one a split model uses",
        ),
    ],
    ids=["unknown-command", "offset", "outside-buffer", "custom-op"],
)
async def test_forged_rpc_from_a_paired_box_is_refused_and_the_worker_lives_on(
    mesh: Mesh,
    caplog: pytest.LogCaptureFixture,
    forge: Callable[[int, int], bytes],
    refused: str,
) -> None:
    caplog.set_level(logging.WARNING, "mongars_edge.mesh.tunnel")
    async with mesh(0, 64) as (a, b):
        bid = await linked(a, b)
        pid = worker_of(b).pid
        client = await RpcClient.connect(await a.rpc_endpoint(bid))
        assert await client.hello() == RPC_PROTO
        buffer, base = await client.alloc(1 << 20)
        await client.send(forge(buffer, base))
        async with asyncio.timeout(10):
            assert await client.ended()  # the stream ends: the client reads an end of stream
        client.close()
        # B logged the refusal naming A and why; A learnt why from B's RpcClose.
        assert any(refused in why for why in refusals(caplog, a.me.node_id))
        assert any(refused in why for why in refusals(caplog, bid))
        # The worker never saw the forged bytes: same process, still serving, and later
        # streams work.
        assert worker_of(b).alive and worker_of(b).pid == pid
        again = await RpcClient.connect(await a.rpc_endpoint(bid))
        assert await again.hello() == RPC_PROTO
        buffer, base = await again.alloc(1 << 20)
        t = tensor(buffer, base, 4096)
        await again.set_tensor(t, 0, b"\x07" * 4096)
        assert await again.get_tensor(t, 0, 4096) == b"\x07" * 4096
        again.close()


async def test_an_unpaired_box_cannot_reach_the_worker(mesh: Mesh) -> None:
    async with mesh(0, 64) as (a, b):
        bid = b.me.node_id
        # No session for a stranger, even one that knows B's key...
        stranger = Identity.generate()
        with pytest.raises(AuthError, match="not paired"):
            await dial("127.0.0.1", b.port, stranger, {bid: b.me.verify_key}.get, expect=bid)
        # ...nor for A before pairing, so no endpoint either...
        with pytest.raises(MeshError, match="no link"):
            await a.rpc_endpoint(bid)
        # ...and the worker listens on nothing reachable from here: its loopback is its own.
        assert worker_of(b).alive
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", PORT)


async def test_a_dropped_link_closes_the_local_sockets_and_splitting_resumes(
    mesh: Mesh,
) -> None:
    async with mesh(0, 64) as (a, b):
        bid = await linked(a, b)
        endpoint = await a.rpc_endpoint(bid)
        client = await RpcClient.connect(endpoint)
        assert await client.hello() == RPC_PROTO
        await until(lambda: len(b.tunnel._streams) == 1)
        a.links[bid].close("cable pulled")
        async with asyncio.timeout(10):  # a hang guard: the client must see EOF, not wait
            assert await client.ended()
        client.close()
        await until(lambda: not b.tunnel._streams)  # B closed its worker connection too
        # The boxes link again by themselves, and the same endpoint carries new streams.
        await settled(a, b)
        again = await RpcClient.connect(endpoint)
        assert await again.hello() == RPC_PROTO
        again.close()


async def test_another_llama_build_is_refused_naming_both(mesh: Mesh) -> None:
    async with mesh(0, 64) as (a, b):
        bid = await linked(a, b)
        endpoint = await a.rpc_endpoint(bid)
        assert a.split_offers() == {bid: 64 << 20}
        other = "llama-cpp-python 0.3.99 ggml 0.26.0 (abc1234) rpc 8.0.0"
        b.tunnel.build = other
        await until(lambda: a.peers[bid].telemetry is not None and _build(a, bid) == other)
        assert a.split_offers() == {}
        with pytest.raises(SplitVersionError) as info:
            await a.rpc_endpoint(bid)
        assert other in str(info.value) and a.tunnel.build in str(info.value)
        # A listener opened before is refused too: its connections end at once.
        client = await RpcClient.connect(endpoint)
        async with asyncio.timeout(10):
            assert await client.ended()
        client.close()


def _build(box: MeshService, peer_id: str) -> str:
    t = box.peers[peer_id].telemetry
    return t.llama_build if t is not None else ""


async def test_a_box_offering_no_memory_is_refused_clearly(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "mongars_edge.mesh.tunnel")
    async with mesh(0, 0) as (a, b):
        await pair(a, b)
        await settled(a, b)
        bid = b.me.node_id
        await until(lambda: a.peers[bid].telemetry is not None)
        with pytest.raises(MeshError, match="offers no memory"):
            await a.rpc_endpoint(bid)
        assert a.split_offers() == {}
        # A peer opening a stream anyway has it refused, with the reason, and nothing else.
        link = a.links[bid]
        link.send(codec.RpcOpen(link.new_id()))
        await until(lambda: refusals(caplog, a.me.node_id))
        assert "offers no memory" in refusals(caplog, a.me.node_id)[0]
        assert bid in a.links


class _SilentWorker:
    """A worker that accepts a connection and never reads from it (a real socket)."""

    budget_bytes = 64 << 20
    alive = True

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.held: list[asyncio.StreamWriter] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.server is None:

            async def hold(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                self.held.append(w)

            self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return await asyncio.open_connection("127.0.0.1", port)


class _PassGuard:
    def from_client(self, data: bytes) -> None:
        pass

    def from_server(self, data: bytes) -> None:
        pass


async def test_a_peer_sending_past_its_window_is_refused_and_the_link_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that stops reading holds at most WINDOW bytes of a stream in this box."""
    caplog.set_level(logging.WARNING, "mongars_edge.mesh.tunnel")
    silent = _SilentWorker()
    ports = [free_port(), free_port()]
    async with (
        MeshService.open(
            fast_config(ports[0], [ports[1]], idle_timeout_s=10.0), tmp_path / "a", None
        ) as a,
        MeshService.open(
            fast_config(ports[1], [ports[0]], idle_timeout_s=10.0),
            tmp_path / "b",
            None,
            rpc_worker=silent,
            rpc_guard=_PassGuard,
        ) as b,
    ):
        bid = await linked(a, b)
        link = a.links[bid]
        sid = link.new_id()
        link.send(codec.RpcOpen(sid))
        chunk = bytes(codec.RPC_CHUNK)
        sent = 0
        # Ignore B's credit, as a broken or hostile peer would: B's queue stops at WINDOW.
        while not refusals(caplog, a.me.node_id) and sent < 256 * WINDOW:
            link.send(codec.RpcData(sid, chunk))
            sent += len(chunk)
            await link.drain()
        assert any("window" in why for why in refusals(caplog, a.me.node_id))
        assert not b.tunnel._streams
        assert bid in a.links and a.me.node_id in b.links  # only the stream ended
        if silent.server is not None:
            silent.server.close()
        for w in silent.held:
            w.close()


async def _generate(*args: str) -> list[int]:
    """Greedy token ids from a child running llama.cpp (tests/support/rpc_generate.py)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.rpc_generate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    tokens: list[int] = json.loads(out)
    return tokens


@pytest.mark.model
async def test_llama_cpp_generates_through_the_tunnel_as_it_does_locally(
    mesh: Mesh, smollm2: Path
) -> None:
    """Every layer of the 135M on B's worker, reached through A's endpoint: llama.cpp's own
    RPC client, the real guard checking every command, greedy tokens identical to local."""
    local = await _generate(str(smollm2), "16")
    assert len(local) >= 8
    async with mesh(0, 512) as (a, b):
        bid = await linked(a, b)
        endpoint = await a.rpc_endpoint(bid)
        assert await _generate(str(smollm2), "16", endpoint) == local
        assert worker_of(b).alive


async def test_a_worker_that_dies_ends_the_stream_and_serves_again_once_restarted(
    mesh: Mesh,
) -> None:
    async with mesh(0, 64) as (a, b):
        bid = await linked(a, b)
        endpoint = await a.rpc_endpoint(bid)
        client = await RpcClient.connect(endpoint)
        assert await client.hello() == RPC_PROTO
        worker = worker_of(b)
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(10):  # a hang guard: the client sees the end of its stream
            assert await client.ended()
        client.close()
        await until(lambda: worker.alive and worker.pid != pid, limit_s=60)
        again = await RpcClient.connect(endpoint)
        assert await again.hello() == RPC_PROTO
        again.close()


async def test_a_worker_that_cannot_start_is_a_clear_problem_and_no_offer(tmp_path: Path) -> None:
    data = tmp_path / "box"
    data.mkdir()
    (data / "split-cache").write_text("a file where the worker's cache would be")
    async with MeshService.open(fast_config(free_port(), [], split_offer_mb=64), data, None) as b:
        assert "split_offer_mb is set but the RPC worker did not start" in b.split_problem
        assert "split-cache" in b.split_problem
        assert b.tunnel.worker is None
        assert b._telemetry().split_budget == 0
        assert b._telemetry().llama_build == llama_build()  # still said: hosts can compare


async def test_a_stalled_stream_holds_a_window_and_the_link_keeps_carrying_the_rest(
    tmp_path: Path,
) -> None:
    """Weights written to a worker that stops reading: the client is held back by its own
    socket, at most WINDOW bytes wait in each box, and telemetry keeps flowing both ways."""
    silent = _SilentWorker()
    ports = [free_port(), free_port()]
    async with (
        MeshService.open(
            fast_config(ports[0], [ports[1]], idle_timeout_s=10.0), tmp_path / "a", None
        ) as a,
        MeshService.open(
            fast_config(ports[1], [ports[0]], idle_timeout_s=10.0),
            tmp_path / "b",
            None,
            rpc_worker=silent,
            rpc_guard=_PassGuard,
        ) as b,
    ):
        bid = await linked(a, b)
        client = await RpcClient.connect(await a.rpc_endpoint(bid))
        writing = asyncio.ensure_future(client.send(bytes(64 << 20)))
        await until(lambda: len(a.tunnel._streams) == 1)
        [host] = a.tunnel._streams.values()
        await until(lambda: host.credit == 0)  # A sent a whole window, and waits for credit
        await until(lambda: len(b.tunnel._streams) == 1)
        [worker_side] = b.tunnel._streams.values()
        seen = (a.peers[bid].telemetry_at, b.peers[a.me.node_id].telemetry_at)
        await until(
            lambda: (
                a.peers[bid].telemetry_at > seen[0] and b.peers[a.me.node_id].telemetry_at > seen[1]
            )
        )
        assert not writing.done()  # the client is held back
        assert sum(len(d) for d in worker_side.inbox) <= WINDOW
        assert host.credit == 0 and not host.inbox
        writing.cancel()
        client.close()
        if silent.server is not None:
            silent.server.close()
        for w in silent.held:
            w.close()
