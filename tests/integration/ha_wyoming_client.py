"""What Home Assistant does with a Wyoming conversation agent, run inside a namespace:

    python ha_wyoming_client.py OWN_ADDRESS CONVERSATION_ID TEXT...

finds `_wyoming._tcp` over mDNS (on OWN_ADDRESS), connects to the address and port it
advertises, asks `describe`, then sends each TEXT as a `transcript` carrying the conversation id
in its context and reads until `handled`/`not-handled`/`error`, as HA's conversation entity
does. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.info import Describe, Info
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

SERVICE = "_wyoming._tcp.local."
TERMINAL = ("handled", "not-handled", "error")


async def _discover(own: str) -> tuple[str, str, int]:
    azc = AsyncZeroconf(interfaces=[own], ip_version=IPVersion.V4Only)
    names: list[str] = []

    def changed(**kw: Any) -> None:
        names.append(kw["name"])

    browser = AsyncServiceBrowser(azc.zeroconf, SERVICE, handlers=[changed])
    try:
        for _ in range(300):
            for name in names:
                info = AsyncServiceInfo(SERVICE, name)
                if await info.async_request(azc.zeroconf, 1000) and info.port:
                    return name, info.parsed_addresses()[0], info.port
            await asyncio.sleep(0.2)
        raise SystemExit("no _wyoming._tcp service found")
    finally:
        await browser.async_cancel()
        await azc.async_close()


async def main(own: str, conversation: str, texts: list[str]) -> dict[str, Any]:
    name, host, port = await _discover(own)
    out: dict[str, Any] = {"name": name, "host": host, "port": port, "turns": []}
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), 60)
        assert event is not None
        info = Info.from_event(event)
        out["handle"] = [p.name for p in info.handle if p.installed]
        out["tts"], out["asr"] = len(info.tts), len(info.asr)
    for text in texts:
        # One connection per turn, as Home Assistant opens one per conversation turn.
        async with AsyncTcpClient(host, port) as client:
            context = {"conversation_id": conversation}
            await client.write_event(Transcript(text, context=context, language="en").event())
            seen: list[str] = []
            while True:
                event = await asyncio.wait_for(client.read_event(), 300)
                assert event is not None, "the server hung up"
                seen.append(event.type)
                if event.type in TERMINAL:
                    out["turns"].append({"events": seen, "data": event.data})
                    break
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))))
