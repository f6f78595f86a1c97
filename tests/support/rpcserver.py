"""llama.cpp RPC workers for split tests: ggml's own server in a subprocess, and a TCP relay.

`start_worker` runs `python -m mongars_edge.split.rpc` (ggml_backend_rpc_start_server on the
CPU device, through ctypes); `lying=True` caps the process's address space just above what it
uses once started, so it reports the machine's memory but cannot allocate a model's layers.
`Relay` forwards a port to a worker and counts the bytes; with `cut_after` it drops the link
once that many bytes went through (a link that drops mid-load).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mongars_edge.split import rpc
from mongars_edge.split.rpcwire import RpcGuard
from mongars_edge.split.worker import RpcWorker, RpcWorkerUnavailable
from tests.support.env import clean_env, free_port

REPO = Path(__file__).resolve().parents[2]

_LYING = """
import resource, sys
from mongars_edge.split import rpc
rpc._ggml()  # libraries mapped first, then the cap: whatever the model needs fails to allocate
vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize'))
cap = (vm + 16 * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
rpc.serve_cpu(sys.argv[1], None, 1)
"""


class Worker:
    """A running RPC worker process on a loopback port."""

    def __init__(self, port: int, *, lying: bool = False) -> None:
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.lying = lying
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 60.0) -> None:
        args = ["-c", _LYING] if self.lying else ["-m", "mongars_edge.split.rpc"]
        self.proc = subprocess.Popen(
            [sys.executable, *args, self.endpoint],
            cwd=REPO,
            env=clean_env(RPC_THREADS="1", PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + deadline_s
        while True:
            try:
                rpc.hello(self.endpoint, timeout_s=2.0)
                return
            except rpc.SplitError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"the RPC worker on {self.endpoint} did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def worker(*, lying: bool = False) -> Iterator[Worker]:
    w = Worker(free_port(), lying=lying)
    w.start()
    try:
        yield w
    finally:
        w.kill()


class Relay:
    """A loopback TCP relay to `target`, counting bytes both ways (`cut_after`: drop then)."""

    def __init__(self, target: str, *, cut_after: int = 0) -> None:
        self.target = rpc.parse_endpoint(target)
        self.cut_after = cut_after
        self.up = 0  # host -> worker
        self.down = 0  # worker -> host
        self.cut = False
        self._server: asyncio.Server | None = None
        self.endpoint = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    if self.cut_after and self.up + self.down > self.cut_after:
                        self.cut = True
                        break
                    dst.write(data)
                    await dst.drain()
            for w in (writer, up_w):
                w.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))


class GuardedRelay:
    """A loopback port to a sandboxed RpcWorker, every byte through one RpcGuard per
    connection: what the mesh tunnel does, without the mesh."""

    def __init__(self, worker: RpcWorker, host: str = "127.0.0.1", port: int = 0) -> None:
        self.worker = worker
        self.refusals: list[str] = []
        self._server: asyncio.Server | None = None
        self._where = (host, port)
        self.endpoint = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, *self._where)
        host = self._where[0]
        self.endpoint = f"{host}:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        guard = RpcGuard(cached_size=self.worker.cached_size)
        try:
            w_reader, w_writer = await self.worker.connect()
        except RpcWorkerUnavailable:
            writer.close()
            return

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, check: Callable[[bytes], None]
        ) -> None:
            while data := await src.read(1 << 20):
                check(data)
                dst.write(data)
                await dst.drain()

        pumps = [
            asyncio.ensure_future(pump(reader, w_writer, guard.from_client)),
            asyncio.ensure_future(pump(w_reader, writer, guard.from_server)),
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
