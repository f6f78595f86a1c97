"""Serving peers' requests: run them on the local engine and stream the tokens back.

A forwarded request carries only the assembled prompt; nothing about it is stored here.
At most MAX_PER_LINK requests per peer run at once; anything that goes wrong becomes an Error
message to that peer, never an exception in this box.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from mongars_edge.mesh import codec
from mongars_edge.mesh.errors import MeshError, PeerUnavailableError

if TYPE_CHECKING:
    from mongars_edge.mesh.node import NodeState
    from mongars_edge.mesh.transport import Link

log = logging.getLogger(__name__)

MAX_PER_LINK: Final = 16
# The sha256 of an adapter this box holds, fetched from the asking peer when missing.
EnsureAdapter = Callable[["Link", str], Awaitable[str]]


class Serving:
    """The requests this box runs for its peers."""

    def __init__(self, node: NodeState, ensure_adapter: EnsureAdapter) -> None:
        self.node = node
        self._ensure_adapter = ensure_adapter
        self._tasks: dict[tuple[int, int], asyncio.Task[None]] = {}

    def cancel(self, link: Link, stream_id: int) -> None:
        task = self._tasks.pop((id(link), stream_id), None)
        if task is not None:
            task.cancel()

    def drop(self, link: Link) -> None:
        """The link is gone: stop everything it asked for."""
        for key in [k for k in self._tasks if k[0] == id(link)]:
            self._tasks.pop(key).cancel()

    def start(self, link: Link, msg: codec.InferRequest) -> None:
        key = (id(link), msg.stream_id)
        served = sum(1 for k in self._tasks if k[0] == id(link))
        if self.node.engine is None or key in self._tasks or served >= MAX_PER_LINK:
            with contextlib.suppress(PeerUnavailableError):
                link.send(codec.Error(msg.stream_id, "busy", "not accepting this request"))
            return
        self.node.served += 1
        task = self.node.spawn(self._run(link, msg))
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def _run(self, link: Link, msg: codec.InferRequest) -> None:
        from mongars_edge.inference.engine import ChatRequest

        assert self.node.engine is not None
        sid = msg.stream_id
        try:
            if msg.model != self.node.engine.info.id:
                raise MeshError(f"model mismatch: this box runs {self.node.engine.info.id}")
            adapter = msg.adapter
            if adapter:
                adapter = await self._ensure_adapter(link, adapter)
            request = ChatRequest(
                messages=codec.request_messages(msg),
                tools=codec.request_tools(msg),
                tool_choice=msg.tool_choice,
                sampling=codec.sampling_of(msg.sampling),
                adapter=adapter,
                grammar=msg.grammar,
                json_schema=msg.json_schema,
                assistant_prefix=msg.assistant_prefix,
            )
            async for event in self.node.engine.stream(request):
                if event.finish_reason is None:
                    link.send(codec.TokenChunk(sid, event.text, event.token_id))
                else:
                    if event.text:
                        link.send(codec.TokenChunk(sid, event.text, event.token_id))
                    link.send(codec.end_of(sid, event))
                await link.drain()
        except asyncio.CancelledError:
            raise
        except PeerUnavailableError:
            return
        except Exception as exc:  # any failure is the peer's answer, never ours to die of
            kind = getattr(exc, "kind", type(exc).__name__)
            log.debug("served request failed", exc_info=True)
            with contextlib.suppress(PeerUnavailableError):
                link.send(codec.Error(sid, str(kind), str(exc)[:500]))
