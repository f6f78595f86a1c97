"""mDNS: advertise `_mongars._tcp.local.` and browse for other boxes (AsyncZeroconf).

TXT: node id, protocol version, mesh id hash (never the id), mesh port, capabilities. Only
the interface the box serves on is used: a box bound to one address advertises on that address,
and a box on loopback is not on the LAN and does not advertise at all (see service._advertise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mongars_edge.mesh import codec
from mongars_edge.mesh.peers import Peer

if TYPE_CHECKING:
    from mongars_edge.mesh.node import NodeState

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_mongars._tcp.local."
_RESOLVE_MS: Final = 3000
_MAX_RESOLVING: Final = 32


def txt_record(node: NodeState) -> dict[str, str]:
    from mongars_edge.mesh.members import mesh_hash

    caps = ["infer"] if node.engine is not None else []
    caps.append("adapters")
    return {
        "id": node.me.node_id,
        "v": str(codec.PROTOCOL_VERSION),
        "mesh": mesh_hash(node.state.mesh_id),
        "port": str(node.port),
        "caps": ",".join(caps),
    }


def parse_txt(props: dict[bytes, bytes | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in list(props.items())[:32]:
        with contextlib.suppress(UnicodeDecodeError, AttributeError):
            out[key.decode()[:32]] = (value or b"").decode()[:128]
    return out


class Discovery:
    """Advertises this box and hands each box it finds to `seen`."""

    def __init__(self, node: NodeState, seen: Callable[[Peer], None]) -> None:
        self.node = node
        self._seen = seen
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mesh = ""

    def _interfaces(self) -> list[str]:
        cfg = self.node.config
        if cfg.mdns_interfaces:
            return list(cfg.mdns_interfaces)
        if cfg.host in ("0.0.0.0", "", "::"):  # noqa: S104
            return []
        return [cfg.host]

    async def start(self) -> None:
        interfaces = self._interfaces()
        self._zc = AsyncZeroconf(interfaces=interfaces or _all(), ip_version=IPVersion.V4Only)
        self._task(self._register())
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change]
        )

    def _service_info(self) -> AsyncServiceInfo:
        interfaces = self._interfaces()
        name = f"mongars-{self.node.me.node_id}.{SERVICE_TYPE}"
        kwargs: dict[str, Any] = {
            "addresses": [socket.inet_aton(a) for a in interfaces or _lan_addresses()]
        }
        txt = txt_record(self.node)
        self._mesh = txt["mesh"]
        return AsyncServiceInfo(
            SERVICE_TYPE,
            name,
            port=self.node.port,
            properties=txt,
            server=f"mongars-{self.node.me.node_id}.local.",
            **kwargs,
        )

    async def _register(self) -> None:
        assert self._zc is not None
        self._info = self._service_info()
        try:
            await (await self._zc.async_register_service(self._info, allow_name_change=True))
        except Exception as exc:  # zeroconf errors must not take the box down
            self.node.warn_once("mdns-register", "cannot advertise on mDNS: %s", exc)

    async def refresh(self) -> None:
        """Re-announce when the mesh id changed (after pairing)."""
        from mongars_edge.mesh.members import mesh_hash

        if self._zc is None or self._info is None:
            return
        if mesh_hash(self.node.state.mesh_id) == self._mesh:
            return
        self._info = self._service_info()
        with contextlib.suppress(Exception):
            await (await self._zc.async_update_service(self._info))

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # A flood of adverts must not become a flood of tasks.
        if len(self._tasks) >= _MAX_RESOLVING:
            self.node.warn_once("mdns-flood", "too many mDNS adverts at once; skipping some")
            return
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            self._task(self._resolve(service_type, name))

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, _RESOLVE_MS):
            return
        txt = parse_txt(info.properties)
        node_id = txt.get("id", "")
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not node_id or node_id == self.node.me.node_id or not addresses or not info.port:
            return
        try:
            version = int(txt.get("v", "0"))
        except ValueError:
            version = 0
        caps = tuple(c for c in txt.get("caps", "").split(",") if c)[:16]
        self._seen(
            Peer(
                node_id=node_id[:32],
                host=addresses[0],
                port=info.port,
                source="mdns",
                version=version,
                mesh_hash=txt.get("mesh", ""),
                capabilities=caps,
                seen_at=time.monotonic(),
            )
        )

    def _task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
        if self._zc is not None:
            with contextlib.suppress(Exception):
                if self._info is not None:
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()


def _lan_addresses() -> list[str]:
    """Every non-loopback IPv4 address of this box (for a server bound to 0.0.0.0)."""
    import ifaddr

    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(ip.ip)
    return out


def _all() -> Any:
    from zeroconf import InterfaceChoice

    return InterfaceChoice.All
