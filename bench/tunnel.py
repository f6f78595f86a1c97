"""Throughput of llama.cpp RPC through the encrypted mesh tunnel, against the worker reached
directly, measured in the same run.

    .venv/bin/python bench/tunnel.py [--mb 64] [--rounds 3] [--json]

Two mesh services on loopback in this process (both ends of the tunnel share one event loop,
so each byte is sealed and opened on the same core: a pessimistic figure for two boxes), box B
offering its RPC worker (the real sandboxed RpcWorker, every stream checked by the real
RpcGuard). One llama.cpp RPC client writes `--mb` MB of weights with SET_TENSOR and reads them
back with GET_TENSOR, through A's tunnel endpoint and directly on a connection to B's worker.
Prints MB/s both ways and the tunnel / direct ratio (median of rounds).
"""

from __future__ import annotations

import sys

# bench/ holds http.py, which would shadow the standard library's `http` for this script.
_HERE = __file__.rsplit("/", 1)[0] or "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mongars_edge.mesh.service import MeshService  # noqa: E402
from mongars_edge.split.worker import RpcWorker  # noqa: E402
from tests.support.env import free_port  # noqa: E402
from tests.support.mesh import fast_config, pair, settled, until  # noqa: E402
from tests.support.rpc import RpcClient, tensor  # noqa: E402


async def _one_way(client: RpcClient, size: int, payload: bytes) -> tuple[float, float]:
    """(MB/s of SET_TENSOR, MB/s of GET_TENSOR) of `payload` on `client`."""
    assert await client.hello()
    buffer, base = await client.alloc(size)
    t = tensor(buffer, base, size)
    start = time.perf_counter()
    await client.set_tensor(t, 0, payload)
    await client.get_tensor(t, 0, 4)  # the worker has taken every byte once it answers
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    back = await client.get_tensor(t, 0, size)
    read = time.perf_counter() - start
    if back != payload:
        raise SystemExit("the bytes read back differ from those written")
    mb = size / 1e6
    return mb / wrote, mb / read


def _offers(box: MeshService, peer_id: str) -> bool:
    t = box.peers[peer_id].telemetry
    return t is not None and t.split_budget > 0


async def run(mb: int, rounds: int) -> dict[str, float]:
    size = mb << 20
    payload = random.Random(16).randbytes(size)
    with tempfile.TemporaryDirectory() as tmp:
        ports = [free_port(), free_port()]
        async with contextlib.AsyncExitStack() as stack:
            boxes = []
            for i, offer in enumerate((0, 2 * mb + 64)):
                config = fast_config(
                    ports[i], [ports[1 - i]], split_offer_mb=offer, idle_timeout_s=10.0
                )
                data = Path(tmp) / f"box{i}"
                data.mkdir()
                boxes.append(await stack.enter_async_context(MeshService.open(config, data, None)))
            a, b = boxes
            await pair(a, b)
            await settled(a, b)
            bid = b.me.node_id
            await until(lambda: _offers(a, bid))
            endpoint = await a.rpc_endpoint(bid)
            worker = b.tunnel.worker
            assert isinstance(worker, RpcWorker)
            out: dict[str, list[float]] = {k: [] for k in ("tw", "tr", "dw", "dr")}
            for _ in range(rounds):
                client = RpcClient(*await worker.connect())
                w, r = await _one_way(client, size, payload)
                client.close()
                out["dw"].append(w)
                out["dr"].append(r)
                client = await RpcClient.connect(endpoint)
                w, r = await _one_way(client, size, payload)
                client.close()
                out["tw"].append(w)
                out["tr"].append(r)
                await asyncio.sleep(0.2)  # the worker serves one client at a time
    med = {k: statistics.median(v) for k, v in out.items()}
    return {
        "tunnel_write_mb_s": med["tw"],
        "tunnel_read_mb_s": med["tr"],
        "direct_write_mb_s": med["dw"],
        "direct_read_mb_s": med["dr"],
        "write_ratio": med["tw"] / med["dw"],
        "read_ratio": med["tr"] / med["dr"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="MB of weights written and read")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.mb, args.rounds))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.mb} MB, median of {args.rounds} rounds")
    print(
        f"host -> worker (SET_TENSOR): tunnel {result['tunnel_write_mb_s']:.0f} MB/s, "
        f"direct {result['direct_write_mb_s']:.0f} MB/s, ratio {result['write_ratio']:.2f}"
    )
    print(
        f"worker -> host (GET_TENSOR): tunnel {result['tunnel_read_mb_s']:.0f} MB/s, "
        f"direct {result['direct_read_mb_s']:.0f} MB/s, ratio {result['read_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
