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

import pytest

from mongars_edge.split.rpcwire import (
    ALLOWED_OPS,
    OP_NAMES,
    RPC_PROTO,
    T,
    TENSOR,
    TYPE_COUNT,
    Cmd,
    RpcGuard,
    RpcRefused,
)
from mongars_edge.split.worker import RpcWorker
from tests.inference.gen_models import smollm2_path

pytestmark = pytest.mark.model

_VENDOR = Path(__file__).resolve().parents[2] / ".cache/llama-server"
_PROMPT = "The capital of France is"
_N_TOKENS = 12


def _header(name: str) -> str:
    """A header of the llama.cpp source this build came from (the lead's cache has it)."""
    roots = [_VENDOR, Path("/work/main/.cache/llama-server")]
    for root in roots:
        found = sorted(root.glob(f"llama_cpp_python-*/vendor/llama.cpp/{name}"))
        if found:
            return found[-1].read_text(encoding="utf-8")
    pytest.skip(f"llama.cpp source ({name}) not in the build cache")


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
    assert proc.returncode == 0, out
    result: list[int] = json.loads(out.decode().strip().splitlines()[-1])
    return result


# -- the relay: every byte through one guard per connection --------------------------------


@dataclass
class Relay:
    worker: RpcWorker
    guards: list[RpcGuard] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    # Per connection, in the order the guard saw them: (from the client?, bytes).
    traffic: list[list[tuple[bool, bytes]]] = field(default_factory=list)
    guard_s: float = 0.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        guard = RpcGuard()
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


async def test_a_real_client_through_the_guard_generates_what_a_local_run_does(
    worker: RpcWorker,
) -> None:
    local = await _generate(None)
    async with _relay(worker) as (relay, endpoint):
        remote = await _generate(endpoint)
    assert relay.refusals == []
    assert remote == local
    to_worker = sum(len(b) for seen in relay.traffic for c, b in seen if c)
    assert to_worker > 50_000_000  # the weights went through the guard
    print(f"\nguard: {to_worker / 1e6:.0f} MB to the worker, {to_worker / relay.guard_s / 1e6:.0f} MB/s")

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
