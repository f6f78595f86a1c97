"""The Wyoming server is advertised as `_wyoming._tcp` (mDNS kept on loopback in tests)."""

from __future__ import annotations

import asyncio

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from mongars_edge.speech.advertise import SERVICE_TYPE, advertise_on

LOOPBACK = ["127.0.0.1"]


async def test_wyoming_service_is_found_on_loopback() -> None:
    async with advertise_on("monGARS test-box", 10299, LOOPBACK, interfaces=LOOPBACK) as info:
        assert info.name == f"monGARS test-box.{SERVICE_TYPE}"
        browser = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        try:
            found = AsyncServiceInfo(SERVICE_TYPE, info.name)
            ok = False
            for _ in range(20):  # registration probes for ~2 s before it answers
                if await found.async_request(browser.zeroconf, 500):
                    ok = True
                    break
                await asyncio.sleep(0.2)
            assert ok, "the service was not resolved"
            assert found.port == 10299
            assert found.parsed_addresses() == ["127.0.0.1"]
            assert found.properties[b"product"] == b"monGARS Edge"
        finally:
            await browser.async_close()
