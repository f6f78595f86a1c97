"""The split-host child: loads a model across RPC workers and serves it to the box.

`python -m mongars_edge.split.child FD SPEC_JSON`, started by `host.SplitEngine` with one end
of a socket pair as FD. llama.cpp's RPC client aborts this whole process when a worker's
connection breaks: that is why it is a child. Its first frame is a HostHello (loaded, or why
not); then it runs the mesh's InferRequest messages on its engine and streams TokenChunk and
End back, as a peer would. It exits when the box closes its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mongars_edge.errors import MongarsError
from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import CodecError
from mongars_edge.split import rpc
from mongars_edge.split.wire import HostHello, HostSpec, decode_spec, encode_hello

if TYPE_CHECKING:
    from mongars_edge.inference.llama import LlamaEngine

log = logging.getLogger(__name__)


async def _read(reader: asyncio.StreamReader) -> bytes | None:
    try:
        header = await reader.readexactly(codec.HEADER_SIZE)
        return await reader.readexactly(codec.frame_length(header))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _devices(spec: HostSpec) -> list[rpc.RemoteDevice]:
    devices = []
    for endpoint in spec.endpoints:
        # Checked here as well as in the box: ggml aborts on a version it cannot speak.
        rpc.check_version(endpoint, rpc.hello(endpoint))
        devices += rpc.add_server(endpoint)
    return devices


async def serve(fd: int, spec: HostSpec) -> int:
    from mongars_edge.inference.llama import EngineConfig, LlamaEngine

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)

    def send(payload: bytes) -> None:
        writer.write(codec.frame(payload))

    t0 = time.monotonic()
    try:
        devices = await asyncio.to_thread(_devices, spec)
        config = EngineConfig(
            model_path=Path(spec.model_path),
            model_id=spec.model_id,
            n_gpu_layers=spec.n_remote_layers,
            devices=tuple(d.handle for d in devices),
            tensor_split=tuple(spec.tensor_split),
            **spec.engine,
        )
        opened = LlamaEngine.open(config)
        engine = await opened.__aenter__()
    except MongarsError as exc:
        send(encode_hello(HostHello(error=str(exc), kind=exc.kind)))
        await writer.drain()
        return 1
    try:
        info = engine.info
        send(
            encode_hello(
                HostHello(
                    model_id=info.id,
                    path=info.path,
                    architecture=info.architecture,
                    n_ctx=info.n_ctx,
                    n_ctx_train=info.n_ctx_train,
                    n_params=info.n_params,
                    size_bytes=info.size_bytes,
                    chat_template=info.chat_template,
                    load_s=time.monotonic() - t0,
                    devices=[(d.name, d.endpoint, d.free_bytes, d.total_bytes) for d in devices],
                )
            )
        )
        await _serve_requests(engine, reader, writer)
    finally:
        await opened.__aexit__(None, None, None)
    return 0


async def _serve_requests(
    engine: LlamaEngine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    tasks: dict[int, asyncio.Task[None]] = {}
    while (payload := await _read(reader)) is not None:
        try:
            msg = codec.decode(payload)
        except CodecError as exc:  # the box is the only writer: a bug, said and skipped
            log.warning("split child: %s", exc)
            continue
        if isinstance(msg, codec.InferRequest):
            task = asyncio.ensure_future(_run(engine, msg, writer))
            tasks[msg.stream_id] = task
            task.add_done_callback(functools.partial(_forget, tasks, msg.stream_id))
        elif isinstance(msg, codec.Cancel) and msg.stream_id in tasks:
            tasks[msg.stream_id].cancel()
    for task in list(tasks.values()):
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


def _forget(tasks: dict[int, asyncio.Task[None]], sid: int, _task: object) -> None:
    tasks.pop(sid, None)


async def _run(engine: LlamaEngine, msg: codec.InferRequest, writer: asyncio.StreamWriter) -> None:
    from mongars_edge.inference.engine import ChatRequest

    sid = msg.stream_id

    def send(m: codec.Msg) -> None:
        writer.write(codec.frame(codec.encode(m)))

    try:
        request = ChatRequest(
            messages=codec.request_messages(msg),
            tools=codec.request_tools(msg),
            tool_choice=msg.tool_choice,
            sampling=codec.sampling_of(msg.sampling),
            grammar=msg.grammar,
            json_schema=msg.json_schema,
            assistant_prefix=msg.assistant_prefix,
        )
        async for event in engine.stream(request):
            if event.text or event.finish_reason is None:
                send(codec.TokenChunk(sid, event.text, event.token_id))
            if event.finish_reason is not None:
                send(codec.end_of(sid, event))
            await writer.drain()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the request's answer, never the child's death
        kind = getattr(exc, "kind", type(exc).__name__)
        with contextlib.suppress(ConnectionError):
            send(codec.Error(sid, str(kind), str(exc)[:500]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print("usage: python -m mongars_edge.split.child FD SPEC_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(int(args[0]), decode_spec(args[1])))


if __name__ == "__main__":
    raise SystemExit(main())
