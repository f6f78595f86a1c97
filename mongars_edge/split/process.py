"""The split-host child as a process: spawned with a socket pair, read frame by frame, killed.

host.SplitEngine supervises it; this module only starts, reads and ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import CodecError
from mongars_edge.split.wire import HostSpec, encode_spec

log = logging.getLogger(__name__)

# ggml's abort line: `/path/ggml-rpc.cpp:566: Remote RPC server crashed ...`.
_ABORT: Final = re.compile(r"\.(?:cpp|c|h):\d+: (.+)$")


class Child:
    """One running child: its process, its socket and the streams it serves."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.streams: dict[int, asyncio.Queue[codec.Msg | BaseException]] = {}
        self.stderr: deque[str] = deque(maxlen=20)
        self.tasks: list[asyncio.Task[None]] = [asyncio.ensure_future(self._pump_stderr())]

    def why(self) -> str:
        """The child's last words: ggml's abort reason when it gave one."""
        for line in reversed(self.stderr):
            found = _ABORT.search(line)
            if found:
                return found.group(1)
        lines = [s for s in self.stderr if s.strip()]
        return lines[-1] if lines else f"exit status {self.proc.returncode}"

    def send(self, msg: codec.Msg) -> None:
        self.writer.write(codec.frame(codec.encode(msg)))

    async def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr.append(line)
            log.debug("split child: %s", line)

    async def kill(self) -> None:
        self.writer.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def spawn(spec: HostSpec, python: str) -> Child:
    """Start `python -m mongars_edge.split.child` on one end of a fresh socket pair."""
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-m",
            "mongars_edge.split.child",
            str(theirs.fileno()),
            encode_spec(spec),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    return Child(proc, reader, writer)


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One frame's payload; None when the stream ended or broke."""
    try:
        header = await reader.readexactly(codec.HEADER_SIZE)
        return await reader.readexactly(codec.frame_length(header))
    except (asyncio.IncompleteReadError, ConnectionError, CodecError):
        return None


def child_env() -> dict[str, str]:
    """This process's environment; the child imports this very package, wherever it lives."""
    import mongars_edge

    root = str(Path(mongars_edge.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    # GGML_NO_BACKTRACE: an abort says why in one line, without attaching gdb for a backtrace.
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "GGML_NO_BACKTRACE": "1"}


@dataclass
class RequestCount:
    """Requests running on the split, for the memory worker's idle signal (local.Busy)."""

    active: int = 0
    depth: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _busy: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def enter(self) -> None:
        self.active += 1
        self._idle.clear()
        self._busy.set()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._busy.clear()
            self._idle.set()

    def is_idle(self) -> bool:
        return self.active == 0

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def wait_busy(self) -> None:
        await self._busy.wait()
