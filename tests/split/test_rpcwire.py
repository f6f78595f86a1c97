"""RpcGuard on real traffic: llama.cpp's RPC client running the 135M through a loopback relay
that feeds the guard, on to a real sandboxed worker; and forged frames that must not pass."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import re
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mongars_edge.split.rpctensor import ALLOWED_OPS, OP_NAMES, TENSOR, TYPE_COUNT, T
from mongars_edge.split.rpcwire import RPC_PROTO, Cmd, RpcGuard, RpcRefused
from mongars_edge.split.worker import RpcWorker
from tests.inference.gen_models import smollm2_path

_VENDOR = Path(__file__).resolve().parents[2] / ".cache/llama-server"
_PROMPT = "The capital of France is"
_N_TOKENS = 12


def _header(name: str) -> str:
    """A header of the llama.cpp source this build came from: in the checkout's llama-server
    build cache (docs/inference.md), present once llama-server was built for the benches."""
    found = sorted(_VENDOR.glob(f"llama_cpp_python-*/vendor/llama.cpp/{name}"))
    if not found:
        pytest.skip(f"llama.cpp source ({name}) not in {_VENDOR} (build llama-server first)")
    return found[-1].read_text(encoding="utf-8")


# -- the client: runs in its own process (llama.cpp's RPC client aborts on a broken link) -----


def client_main(argv: list[str]) -> None:
    """`python -c ... MODEL N [ENDPOINT]`: greedy tokens as JSON, through RPC if an endpoint."""
    import llama_cpp.llama_cpp as L
    import numpy as np

    model_path, n, endpoint = argv[0], int(argv[1]), argv[2] if len(argv) > 2 else None
    from mongars_edge.inference.lowlevel import init_backend

    init_backend()
    params = L.llama_model_default_params()
    if endpoint:
        lib_dir = Path(L.__file__).parent / "lib"
        rpc = ctypes.CDLL(str(lib_dir / "libggml-rpc.so"))
        rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
        rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
        reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        get = L._lib.ggml_backend_reg_dev_get
        get.argtypes, get.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p
        devices = (ctypes.c_void_p * 2)(get(reg, 0), None)
        params.devices = ctypes.cast(devices, ctypes.c_void_p)
        params.n_gpu_layers = 99
    model = L.llama_model_load_from_file(model_path.encode(), params)
    cparams = L.llama_context_default_params()
    cparams.n_ctx, cparams.n_batch, cparams.n_threads, cparams.n_threads_batch = 256, 256, 2, 2
    ctx = L.llama_init_from_model(model, cparams)
    vocab = L.llama_model_get_vocab(model)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    text = _PROMPT.encode()
    buf = (L.llama_token * 64)()
    count = L.llama_tokenize(vocab, text, len(text), buf, 64, True, False)
    tokens = list(buf[:count])
    out: list[int] = []
    batch_tokens = (L.llama_token * len(tokens))(*tokens)
    for _ in range(n):
        if L.llama_decode(ctx, L.llama_batch_get_one(batch_tokens, len(batch_tokens))) != 0:
            raise SystemExit("decode failed")
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
        token = int(logits.argmax())
        out.append(token)
        batch_tokens = (L.llama_token * 1)(token)
    print(json.dumps(out), flush=True)
    L.llama_free(ctx)
    L.llama_model_free(model)


async def _generate(endpoint: str | None) -> list[int]:
    code = "import sys; from tests.split.test_rpcwire import client_main; client_main(sys.argv[1:])"
    args = [str(smollm2_path()), str(_N_TOKENS), *([endpoint] if endpoint else [])]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:  # llama.cpp's RPC client aborts when its link breaks
        return []
    result: list[int] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- the relay: every byte through one guard per connection --------------------------------


@dataclass
class Relay:
    worker: RpcWorker
    guards: list[RpcGuard] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # Per connection, in the order the guard saw them: (from the client?, bytes).
    traffic: list[list[tuple[bool, bytes]]] = field(default_factory=list, repr=False)
    guard_s: float = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        guard = self.worker.guard()
        self.guards.append(guard)
        seen: list[tuple[bool, bytes]] = []
        self.traffic.append(seen)
        w_reader, w_writer = await self.worker.connect()

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, check: Callable[[bytes], None]
        ) -> None:
            while data := await src.read(1 << 20):
                started = time.perf_counter()
                check(data)
                self.guard_s += time.perf_counter() - started
                seen.append((check == guard.from_client, data))
                dst.write(data)
                await dst.drain()

        # The worker serves one connection at a time: when either side ends, both must close.
        pumps = [
            asyncio.create_task(pump(reader, w_writer, guard.from_client)),
            asyncio.create_task(pump(w_reader, writer, guard.from_server)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None and not isinstance(error, ConnectionError):
                    self.refusals.append(f"{type(error).__name__}: {error}")
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, w_writer):
                w.close()


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[RpcWorker]:
    w = RpcWorker(
        tmp_path / "cache",
        budget_bytes=1 << 30,
        threads=2,
        cache_max_bytes=1 << 30,
        trim_every_s=3600,
    )
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@contextlib.asynccontextmanager
async def _relay(worker: RpcWorker) -> AsyncIterator[tuple[Relay, str]]:
    relay = Relay(worker)
    server = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield relay, f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.model
@pytest.mark.timeout(900)  # three loads of the 135M: a loaded 2-core box needs the room
async def test_a_real_client_through_the_guard_generates_what_a_local_run_does(
    worker: RpcWorker,
) -> None:
    local = await _generate(None)
    assert len(local) == _N_TOKENS
    async with _relay(worker) as (relay, endpoint):
        remote = await _generate(endpoint)
    assert relay.refusals == []
    assert remote == local
    # Weights over llama.cpp's hash threshold (10 MiB) were kept in the worker's cache: a second
    # load sends them no more.
    cached = await asyncio.to_thread(
        lambda: sum(p.stat().st_size for p in worker.cache_dir.iterdir())
    )
    assert cached > 10 << 20
    async with _relay(worker) as (again, endpoint):
        assert await _generate(endpoint) == local
    assert again.refusals == []
    sent_first = sum(len(b) for seen in relay.traffic for c, b in seen if c)
    sent_again = sum(len(b) for seen in again.traffic for c, b in seen if c)
    assert sent_again <= sent_first - cached
    to_worker = sum(len(b) for seen in relay.traffic for c, b in seen if c)
    assert to_worker > 50_000_000  # the weights went through the guard
    rate = to_worker / relay.guard_s / 1e6
    print(f"\nguard: {to_worker / 1e6:.0f} MB to the worker, {rate:.0f} MB/s in the relay")

    # The recorded traffic replays through fresh guards with no refusal, cut anywhere; whole,
    # it measures the guard alone.
    elapsed = await asyncio.to_thread(_replay, relay.traffic, (7, 13, 4096, 1 << 20))
    elapsed = await asyncio.to_thread(_replay, relay.traffic, (1 << 20,))
    print(f"guard alone, 1 MiB chunks: {to_worker / elapsed / 1e6:.0f} MB/s")


def _replay(traffic: list[list[tuple[bool, bytes]]], cuts: tuple[int, ...]) -> float:
    """Feed recorded connections to fresh guards in pieces of the sizes in `cuts` (in turn);
    the seconds spent in the guards."""
    spent = 0.0
    turn = 0
    for seen in traffic:
        guard = RpcGuard()
        for from_client, data in seen:
            feed = guard.from_client if from_client else guard.from_server
            view = memoryview(data)
            i = 0
            while i < len(view):
                cut = cuts[turn % len(cuts)]
                turn += 1
                started = time.perf_counter()
                feed(view[i : i + cut])
                spent += time.perf_counter() - started
                i += cut
    return spent


# -- forged frames ---------------------------------------------------------------------------

_F32 = 0
_BUF_SIZE = 1 << 20


def _frame(cmd: int, payload: bytes) -> bytes:
    return bytes([cmd]) + struct.pack("<Q", len(payload)) + payload


def _tensor(
    *,
    buffer: int,
    data: int,
    n: int = 256,
    op: str = "NONE",
    tid: int = 1,
    src: tuple[int, ...] = (),
    ne: tuple[int, int, int, int] | None = None,
) -> bytes:
    shape = ne or (n, 1, 1, 1)
    full = (4, 4 * shape[0], 4 * shape[0] * shape[1], 4 * shape[0] * shape[1] * shape[2])
    strides = tuple(x & 0xFFFFFFFF for x in full)
    srcs = (*src, *([0] * (10 - len(src))))
    op_params = [0] * 16
    return TENSOR.pack(
        tid, _F32, buffer, *shape, *strides, OP_NAMES.index(op), *op_params, 0, *srcs, 0, 0,
        data, b"forged", 0,
    )  # fmt: skip


def _graph(*tensors: bytes, nodes: tuple[int, ...] = (1,)) -> bytes:
    body = struct.pack("<II", 0, len(nodes)) + struct.pack(f"<{len(nodes)}Q", *nodes)
    return _frame(Cmd.GRAPH_COMPUTE, body + struct.pack("<I", len(tensors)) + b"".join(tensors))


class _Session:
    """A hand-driven RPC client: every frame through a guard, as the tunnel does."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, guard: RpcGuard
    ) -> None:
        self.reader, self.writer, self.guard = reader, writer, guard
        self.buffer = self.base = 0

    async def send(self, frame: bytes) -> None:
        self.guard.from_client(frame)
        self.writer.write(frame)
        await self.writer.drain()

    async def reply(self, size: int) -> bytes:
        data = await self.reader.readexactly(8 + size)
        self.guard.from_server(data)
        return data[8:]

    async def open(self) -> _Session:
        """HELLO, and a buffer of _BUF_SIZE bytes with its base."""
        await self.send(_frame(Cmd.HELLO, bytes(24)))
        assert (await self.reply(28))[:3] == bytes(RPC_PROTO)
        await self.send(_frame(Cmd.DEVICE_COUNT, b""))
        await self.reply(4)
        await self.send(_frame(Cmd.ALLOC_BUFFER, struct.pack("<IQ", 0, _BUF_SIZE)))
        self.buffer, size = struct.unpack("<QQ", await self.reply(16))
        assert self.buffer and size >= _BUF_SIZE
        await self.send(_frame(Cmd.BUFFER_GET_BASE, struct.pack("<Q", self.buffer)))
        (self.base,) = struct.unpack("<Q", await self.reply(8))
        return self

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def _session(worker: RpcWorker, guard: RpcGuard | None = None) -> AsyncIterator[_Session]:
    reader, writer = await worker.connect()
    session = _Session(reader, writer, guard or RpcGuard())
    try:
        yield await session.open()
    finally:
        session.close()


@pytest.mark.model
async def test_a_tensor_written_through_the_guard_reads_back(worker: RpcWorker) -> None:
    async with _session(worker) as s:
        tensor = _tensor(buffer=s.buffer, data=s.base + 4096)
        payload = bytes(range(256)) * 4
        await s.send(_frame(Cmd.SET_TENSOR, tensor + b"\0" + struct.pack("<Q", 0) + payload))
        await s.send(_frame(Cmd.GET_TENSOR, tensor + struct.pack("<QQ", 0, len(payload))))
        assert await s.reply(len(payload)) == payload


@pytest.mark.model
async def test_a_cached_tensor_must_fill_its_tensor(worker: RpcWorker) -> None:
    """SET_TENSOR_HASH loads a file of the worker's cache into a tensor: one of the wrong size
    (a truncated write, a forged hash) is refused; one that fits loads."""
    good, bad = 0x1234, 0x5678
    payload = bytes(range(256)) * 4
    await asyncio.to_thread((worker.cache_dir / f"{good:016x}").write_bytes, payload)
    await asyncio.to_thread((worker.cache_dir / f"{bad:016x}").write_bytes, payload[:100])
    guard = RpcGuard(cached_size=worker.cached_size)
    async with _session(worker, guard) as s:
        tensor = _tensor(buffer=s.buffer, data=s.base)
        await s.send(_frame(Cmd.SET_TENSOR_HASH, tensor + struct.pack("<QQ", 0, good)))
        assert await s.reply(1) == b"\1"
        await s.send(_frame(Cmd.GET_TENSOR, tensor + struct.pack("<QQ", 0, len(payload))))
        assert await s.reply(len(payload)) == payload
        with pytest.raises(RpcRefused, match="damaged"):
            await s.send(_frame(Cmd.SET_TENSOR_HASH, tensor + struct.pack("<QQ", 0, bad)))


def _forgeries(buffer: int, base: int) -> dict[str, tuple[bytes, str]]:
    """Frames a split model never sends, each with a word its refusal must contain."""
    t = _tensor(buffer=buffer, data=base)
    leaf = _tensor(buffer=buffer, data=base, tid=1)
    return {
        "custom op": (_graph(leaf, _tensor(buffer=buffer, data=base + 1024, op="CUSTOM", tid=2,
                                           src=(1,)), nodes=(2,)), "CUSTOM"),
        "map custom op": (_graph(_tensor(buffer=buffer, data=base, op="MAP_CUSTOM1")),
                          "MAP_CUSTOM1"),
        "backward op": (_graph(_tensor(buffer=buffer, data=base, op="OPT_STEP_ADAMW")),
                        "OPT_STEP_ADAMW"),
        "offset past the tensor": (
            _frame(Cmd.SET_TENSOR, t + b"\0" + struct.pack("<Q", 1 << 20) + bytes(16)),
            "outside the tensor"),
        "write past the tensor": (
            _frame(Cmd.SET_TENSOR, t + b"\0" + struct.pack("<Q", 1000) + bytes(64)),
            "outside the tensor"),
        "read past the tensor": (
            _frame(Cmd.GET_TENSOR, t + struct.pack("<QQ", 0, 1 << 30)), "outside the tensor"),
        "unknown buffer": (
            _frame(Cmd.SET_TENSOR, _tensor(buffer=0xDEAD0000, data=base) + bytes(9) + bytes(4)),
            "not allocated here"),
        "tensor outside its buffer": (
            _frame(Cmd.GET_TENSOR, _tensor(buffer=buffer, data=base + _BUF_SIZE + (1 << 30))
                   + struct.pack("<QQ", 0, 4)), "outside its buffer"),
        "element count overflow": (
            _frame(Cmd.INIT_TENSOR, _tensor(buffer=0, data=0, ne=(2**32 - 1,) * 4)), "too large"),
        "matrix product written past its result": (_graph(
            _tensor(buffer=buffer, data=base, ne=(256, 64, 1, 1), tid=1),
            _tensor(buffer=buffer, data=base + (64 << 10), ne=(256, 8, 1, 1), tid=2),
            _tensor(buffer=buffer, data=base + (128 << 10), n=1, op="MUL_MAT", tid=3, src=(1, 2)),
            nodes=(3,)), "MUL_MAT of shape (1, 1, 1, 1)"),
        "graph node never sent": (_graph(leaf, nodes=(7,)), "not sent"),
        "graph cycle": (_graph(_tensor(buffer=buffer, data=base, op="ADD", src=(1,))),
                        "not sent before"),
        "free of an unknown buffer": (_frame(Cmd.FREE_BUFFER, struct.pack("<Q", 0xBEEF)),
                                      "not allocated here"),
        "unknown command": (_frame(42, b""), "unknown RPC command 42"),
        "RPC_CMD_NONE": (_frame(18, b""), "unknown RPC command 18"),
        "second HELLO": (_frame(Cmd.HELLO, bytes(24)), "second"),
        "wrong size": (_frame(Cmd.GET_ALIGNMENT, bytes(8)), "expected 4"),
        "missing device": (_frame(Cmd.GET_DEVICE_MEMORY, struct.pack("<I", 3)), "device 3"),
    }  # fmt: skip


_FORGERIES = sorted(_forgeries(0, 0))


@pytest.mark.model
@pytest.mark.parametrize("name", _FORGERIES)
async def test_a_forged_frame_is_refused_and_the_worker_survives(
    worker: RpcWorker, name: str
) -> None:
    pid = worker.pid
    async with _session(worker) as s:
        frame, why = _forgeries(s.buffer, s.base)[name]
        with pytest.raises(RpcRefused, match=re.escape(why)):
            await s.send(frame)
        with pytest.raises(RpcRefused, match="already refused"):
            await s.send(_frame(Cmd.DEVICE_COUNT, b""))
    # The forged frame never reached the worker: the same child answers a fresh HELLO.
    async with _session(worker):
        pass
    assert worker.alive and worker.pid == pid


@pytest.mark.model
async def test_a_hello_of_another_protocol_version_never_reaches_the_worker(
    worker: RpcWorker,
) -> None:
    pid = worker.pid
    s = _Session(*await worker.connect(), RpcGuard())
    try:
        with pytest.raises(RpcRefused, match=r"RPC protocol 7\.0\.0"):
            await s.send(_frame(Cmd.HELLO, b""))  # protocol 6's HELLO
    finally:
        s.close()
    async with _session(worker):
        pass
    assert worker.alive and worker.pid == pid


@pytest.mark.model
async def test_unguarded_the_same_forgery_kills_the_worker_which_restarts(
    worker: RpcWorker,
) -> None:
    """What the guard is for: llama.cpp's server aborts on a tensor outside its buffer."""
    pid = worker.pid
    reader, writer = await worker.connect()
    s = await _Session(reader, writer, RpcGuard()).open()
    bad = _tensor(buffer=s.buffer, data=s.base + _BUF_SIZE + (1 << 30))
    writer.write(_frame(Cmd.GET_TENSOR, bad + struct.pack("<QQ", 0, 4)))  # not through the guard
    assert await reader.read() == b""  # the worker died
    s.close()
    for _ in range(200):
        if worker.alive and worker.pid != pid:
            break
        await asyncio.sleep(0.05)
    assert worker.alive and worker.pid != pid
    async with _session(worker):
        pass


# -- the guard alone ---------------------------------------------------------------------------


def _hello_reply(version: tuple[int, int, int]) -> bytes:
    return struct.pack("<Q", 28) + bytes([*version, 0]) + bytes(24)


def test_a_worker_of_another_protocol_version_is_refused_naming_both() -> None:
    guard = RpcGuard()
    guard.from_client(_frame(Cmd.HELLO, bytes(24)))
    with pytest.raises(RpcRefused, match=r"protocol 6\.1\.0, this box 7\.0\.0"):
        guard.from_server(_hello_reply((6, 1, 0)))


def test_a_client_of_another_protocol_version_is_refused() -> None:
    guard = RpcGuard()
    with pytest.raises(RpcRefused, match=r"does not speak RPC protocol 7\.0\.0"):
        guard.from_client(_frame(Cmd.HELLO, b""))  # protocol 6's HELLO had no payload


def test_a_transport_upgrade_is_refused() -> None:
    with pytest.raises(RpcRefused, match="RDMA"):
        RpcGuard().from_client(_frame(Cmd.HELLO, b"\1" + bytes(23)))


def test_commands_before_hello_and_replies_nobody_asked_for_are_refused() -> None:
    with pytest.raises(RpcRefused, match="before HELLO"):
        RpcGuard().from_client(_frame(Cmd.DEVICE_COUNT, b""))
    with pytest.raises(RpcRefused, match="nobody asked for"):
        RpcGuard().from_server(_hello_reply(RPC_PROTO))


def test_an_oversized_message_is_refused_from_its_header() -> None:
    guard = RpcGuard(max_message=1 << 20)
    guard.from_client(_frame(Cmd.HELLO, bytes(24)))
    guard.from_server(_hello_reply(RPC_PROTO))
    with pytest.raises(RpcRefused, match="larger than the limit"):
        guard.from_client(bytes([Cmd.SET_TENSOR]) + struct.pack("<Q", (1 << 20) + 1))


def test_allocations_beyond_the_budget_are_refused() -> None:
    guard = RpcGuard(budget_bytes=1 << 20)
    guard.from_client(_frame(Cmd.HELLO, bytes(24)))
    guard.from_server(_hello_reply(RPC_PROTO))
    guard.from_client(_frame(Cmd.ALLOC_BUFFER, struct.pack("<IQ", 0, 1 << 19)))
    guard.from_server(struct.pack("<QQQ", 16, 0x1000, 1 << 19))
    with pytest.raises(RpcRefused, match="budget"):
        guard.from_client(_frame(Cmd.ALLOC_BUFFER, struct.pack("<IQ", 0, (1 << 19) + 1)))


def test_the_guard_matches_the_llama_cpp_source_it_was_built_from() -> None:
    rpc_h = _header("ggml/include/ggml-rpc.h")
    version = tuple(
        int(re.search(rf"RPC_PROTO_{part}_VERSION\s+(\d+)", rpc_h).group(1))  # type: ignore[union-attr]
        for part in ("MAJOR", "MINOR", "PATCH")
    )
    assert version == RPC_PROTO
    ggml_h = _header("ggml/include/ggml.h")

    def members(enum: str) -> list[str]:
        found = re.search(rf"enum {enum} {{(.*?)}};", ggml_h, re.S)
        assert found is not None
        body = re.sub(r"//.*", "", found.group(1))
        return [m.split("=")[0].strip() for m in body.split(",") if m.strip()]

    assert [f"GGML_OP_{n}" for n in OP_NAMES] == members("ggml_op")[:-1]
    assert members("ggml_op")[-1] == "GGML_OP_COUNT"
    assert re.search(rf"GGML_TYPE_COUNT\s*=\s*{TYPE_COUNT},", ggml_h)
    assert len(members("ggml_unary_op")) - 1 == 22 and len(members("ggml_glu_op")) - 1 == 7
    cpp = _header("ggml/src/ggml-rpc/ggml-rpc.cpp")
    assert "static_assert(RPC_CMD_HELLO == 14" in cpp and T == 296
    assert {"CUSTOM", "MAP_CUSTOM1", "MAP_CUSTOM2", "MAP_CUSTOM3"}.isdisjoint(ALLOWED_OPS)


def test_the_guards_operation_table_is_the_built_librarys() -> None:
    """Every operation name, by number, as the libggml this box loads names it: the allowlist
    is checked by number on the wire, so a shifted table would allow the wrong operations."""
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    assert [lib.ggml_op_name(i).decode() for i in range(len(OP_NAMES))] == list(OP_NAMES)


def _opened_guard() -> RpcGuard:
    """A guard past HELLO, with one 1 MiB buffer at 0x10000 (as a worker would have replied)."""
    guard = RpcGuard()
    guard.from_client(_frame(Cmd.HELLO, bytes(24)))
    guard.from_server(_hello_reply(RPC_PROTO))
    guard.from_client(_frame(Cmd.ALLOC_BUFFER, struct.pack("<IQ", 0, _BUF_SIZE)))
    guard.from_server(struct.pack("<QQQ", 16, 0xB0F, _BUF_SIZE))
    guard.from_client(_frame(Cmd.BUFFER_GET_BASE, struct.pack("<Q", 0xB0F)))
    guard.from_server(struct.pack("<QQ", 8, 0x10000))
    return guard


@given(st.binary(max_size=2048))
def test_any_bytes_from_a_client_pass_or_are_refused_never_crash(data: bytes) -> None:
    with contextlib.suppress(RpcRefused):
        _opened_guard().from_client(data)


_U32 = st.one_of(st.integers(0, 4096), st.integers(0, 2**32 - 1))
_TENSORS = st.builds(
    lambda tid, typ, buf, ne, nb, op, p0, src, data, name: TENSOR.pack(
        tid, typ, buf, *ne, *nb, op, p0, *[0] * 15, 0, *src, 0, 0, data, name, 0
    ),
    st.integers(0, 3),
    st.integers(0, TYPE_COUNT + 2),
    st.sampled_from([0, 0xB0F, 0xDEAD]),
    st.lists(_U32, min_size=4, max_size=4),
    st.lists(_U32, min_size=4, max_size=4),
    st.integers(0, len(OP_NAMES) + 2),
    st.integers(-2, 30),
    st.lists(st.integers(0, 3), min_size=10, max_size=10),
    st.one_of(st.just(0), st.integers(0x10000, 0x10000 + _BUF_SIZE), st.integers(0, 2**64 - 1)),
    st.binary(min_size=64, max_size=64),
)
_TENSOR_COMMANDS = [
    Cmd.INIT_TENSOR,
    Cmd.GET_TENSOR,
    Cmd.MEMSET_TENSOR,
    Cmd.SET_TENSOR_HASH,
    Cmd.COPY_TENSOR,
    Cmd.GET_ALLOC_SIZE,
    Cmd.SET_TENSOR,
    Cmd.GRAPH_COMPUTE,
]


@given(st.sampled_from(_TENSOR_COMMANDS), st.lists(_TENSORS, min_size=1, max_size=11),
       st.lists(st.integers(0, 2**64 - 1), min_size=2, max_size=2))  # fmt: skip
def test_any_tensor_in_any_command_passes_or_is_refused_never_crash(
    cmd: Cmd, tensors: list[bytes], numbers: list[int]
) -> None:
    """Structured tensors (mostly plausible fields) in every command that carries tensors."""
    offset, size = numbers
    if cmd is Cmd.GRAPH_COMPUTE:
        frame = _graph(*tensors, nodes=(1,))
    elif cmd is Cmd.SET_TENSOR:
        frame = _frame(cmd, tensors[0] + b"\0" + struct.pack("<Q", offset) + bytes(size % 2048))
    else:
        count = {Cmd.COPY_TENSOR: 2, Cmd.GET_ALLOC_SIZE: 11}.get(cmd, 1)
        extra = {Cmd.GET_TENSOR: 16, Cmd.MEMSET_TENSOR: 17, Cmd.SET_TENSOR_HASH: 16}.get(cmd, 0)
        body = b"".join((tensors * 11)[:count]) + struct.pack("<QQ", offset, size)[:extra]
        body += bytes(extra - min(extra, 16))
        frame = _frame(cmd, bytes(4) + body if cmd is Cmd.GET_ALLOC_SIZE else body)
    guard = _opened_guard()
    with contextlib.suppress(RpcRefused):
        guard.from_client(frame)
        # a reply of the right size, when the command has one
        if cmd in (Cmd.GET_TENSOR, Cmd.COPY_TENSOR, Cmd.SET_TENSOR_HASH, Cmd.GET_ALLOC_SIZE):
            n = {Cmd.GET_TENSOR: size, Cmd.GET_ALLOC_SIZE: 8}.get(cmd, 1)
            guard.from_server(struct.pack("<Q", n) + bytes(min(n, 64)))


@given(st.lists(st.integers(0, 2**32 - 1), min_size=4, max_size=4), st.sampled_from(OP_NAMES))
def test_any_graph_node_passes_or_is_refused_never_crash(ne: list[int], op: str) -> None:
    leaf = _tensor(buffer=0xB0F, data=0x10000, tid=1)
    node = _tensor(buffer=0xB0F, data=0x10000, tid=2, op=op, src=(1, 1, 1),
                   ne=(ne[0], ne[1], ne[2], ne[3]))  # fmt: skip
    with contextlib.suppress(RpcRefused):
        _opened_guard().from_client(_graph(leaf, node, nodes=(2,)))
