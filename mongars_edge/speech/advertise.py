"""Zeroconf `_wyoming._tcp` advertisement so Home Assistant finds the box's voice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_wyoming._tcp.local."


def service_info(name: str, port: int, addresses: Sequence[str]) -> Any:
    """The AsyncServiceInfo for our Wyoming server."""
    from zeroconf.asyncio import AsyncServiceInfo

    safe = "".join(ch if ch.isalnum() or ch in "-_ " else "-" for ch in name)[:60] or "mongars"
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{safe}.{SERVICE_TYPE}",
        port=port,
        parsed_addresses=list(addresses),
        properties={"product": "monGARS Edge"},
        server=f"{safe.replace(' ', '-')}.local.",
    )


@contextlib.asynccontextmanager
async def advertise_on(
    name: str,
    port: int,
    addresses: Sequence[str],
    interfaces: Sequence[str] | None = None,
) -> AsyncIterator[Any]:
    """Register the service on our own AsyncZeroconf (on *interfaces*, else all) meanwhile.

    Registration (probe + announce, ~2 s) runs in the background: the box does not wait for it.
    """
    from zeroconf import InterfaceChoice, IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    azc = AsyncZeroconf(
        interfaces=list(interfaces) if interfaces else InterfaceChoice.All,
        ip_version=IPVersion.V4Only,
    )
    info = service_info(name, port, addresses)

    async def register() -> None:
        try:
            await (await azc.async_register_service(info, allow_name_change=True))
            log.info("advertising wyoming over mDNS", extra={"service": info.name, "port": port})
        except Exception as exc:  # zeroconf errors cost discovery, never the server
            log.warning("cannot advertise the Wyoming server over mDNS: %s", exc)

    task = asyncio.create_task(register(), name="wyoming mdns")
    try:
        yield info
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await (await azc.async_unregister_service(info))
        await azc.async_close()


@contextlib.asynccontextmanager
async def advertise(host: str, port: int) -> AsyncIterator[None]:
    """Advertise from the running box listening on `host` (only when beyond loopback)."""
    anywhere = host in ("0.0.0.0", "::", "")  # noqa: S104 - reading the setting, not binding
    addresses = [_lan_address()] if anywhere else [host]
    interfaces = None if anywhere else [host]
    name = f"monGARS {socket.gethostname()}"
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(advertise_on(name, port, addresses, interfaces))
        except (OSError, ValueError, RuntimeError) as exc:  # no multicast-capable interface
            log.warning("cannot advertise the Wyoming server over mDNS: %s", exc)
        yield


def _lan_address() -> str:
    """The address of the interface that routes to the mDNS group (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("224.0.0.251", 5353))
            return str(sock.getsockname()[0])
        except OSError:
            return "127.0.0.1"
