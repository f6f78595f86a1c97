"""Mesh benchmark in network namespaces: ratios against a 1-box baseline measured in the same run.

    .venv/bin/python bench/mesh.py [--rounds 5] [--model ID] [--clients 8] [--timeline] [--json]
    .venv/bin/python bench/mesh.py --plain [--rounds 3] [--model ID]

As root (network namespaces). Two namespaces on a bridge, each box pinned to its own core
(taskset), both on the same model
(--model: a catalog id pulled into --models-from, default the embedded 135M). Box B is a real
`mongars-edge serve`; the origin A is this script re-executed inside its namespace with a real
engine, MeshService and Router, so it can time what happens inside. Prints:
 (a) aggregate tok/s of A+B (paired) with N concurrent clients / A alone, rounds interleaved,
     median of the per-round ratios (target >= 1.8); beside it, the same requests split in
     fixed halves, A's half on its engine and B's sent straight to B, no router: what pooling
     the two boxes' slots adds (--timeline prints each round's per-box spans)
 (b) added latency of a forwarded request at low load: p50 time to first token through the peer
     minus p50 time to first token locally (target <= 10 ms)
 (c) from A's process start to its first forwarded request, A already paired (target <= 3 s)
With --plain (no root, no namespaces, no mesh), what the two cores give the same bursts:
 (p) two plain engines, one per core, each given half of the requests at once / one engine
     given all of them; then that ratio split into the burst's length (twice one engine's rate
     on half the requests, alone / its rate on all) and the cores side by side (both halves at
     once / twice one half alone). The mesh's (a) is measured against this ceiling.
"""

from __future__ import annotations

import sys
import time

_T0 = time.monotonic()
# bench/ holds http.py, which would shadow the standard library's `http` for this script.
_HERE = __file__.rsplit("/", 1)[0] or "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, TYPE_CHECKING, Any, NoReturn  # noqa: E402

if TYPE_CHECKING:
    from mongars_edge.inference.engine import ChatRequest
    from mongars_edge.inference.llama import EngineConfig

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_MODEL_ID = "smollm2-135m-instruct"
# Both boxes run the same engine shape: A's EngineConfig here, B's through its settings (B's
# profile would give it 4096 tokens a sequence, 12.6-13.8 against A's 14.5 tok/s on the 1.5B).
N_CTX = 2048
N_PARALLEL = 4
PROMPTS = [
    "Explain why the sky is blue.",
    "Give three tips for growing tomatoes.",
    "What is a prime number? Answer briefly.",
    "Describe a cat to someone who has never seen one.",
    "Why do we have seasons?",
    "Write a short poem about rain.",
    "How does a bicycle stay upright?",
    "What is the capital of France and why is it famous?",
]


# --- the origin, running inside namespace A --------------------------------------------------


def _requests(n: int, tokens: int) -> list[ChatRequest]:
    """A burst of n greedy requests cycling through PROMPTS."""
    from mongars_edge.inference.engine import ChatRequest, Sampling

    return [
        ChatRequest.of([("user", PROMPTS[i % len(PROMPTS)])], sampling=Sampling.greedy(tokens))
        for i in range(n)
    ]


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    """Every engine of this bench: one thread, N_PARALLEL slots of N_CTX tokens."""
    from mongars_edge.inference.llama import EngineConfig

    return EngineConfig(
        model_path=model_path(args.model, Path(args.models_from)),
        model_id=args.model,
        n_ctx=N_CTX,
        n_parallel=N_PARALLEL,
        n_threads=1,
        n_threads_batch=1,
    )


async def _origin(args: argparse.Namespace) -> dict[str, Any]:
    from mongars_edge.inference.engine import ChatRequest, Engine, Sampling, complete
    from mongars_edge.inference.llama import LlamaEngine
    from mongars_edge.mesh import pairing
    from mongars_edge.mesh.node import MeshConfig
    from mongars_edge.mesh.remote import RemoteEngine
    from mongars_edge.mesh.router import Router
    from mongars_edge.mesh.service import MeshService

    data = Path(args.data)
    config = _engine_config(args)
    mesh_config = MeshConfig(host=args.address, port=8765, gossip_s=1.0)
    out: dict[str, Any] = {}

    def requests(n: int) -> list[ChatRequest]:
        return _requests(n, args.tokens)

    routed: dict[str, str] = {}  # request id -> where the router sent it ("local" or a peer)
    timeline: list[list[dict[str, Any]]] = []  # per round: each request's times and place

    async def timed(
        engine: Engine, where: str, request: ChatRequest, start: float
    ) -> dict[str, Any]:
        first = None
        async for event in engine.stream(request):
            if first is None:
                first = time.monotonic() - start
            if event.finish_reason is not None:
                tokens = event.usage.completion_tokens if event.usage else 0
                return {
                    "where": where or routed.pop(request.request_id, "local"),
                    "first": first,
                    "end": time.monotonic() - start,
                    "tokens": tokens,
                }
        raise SystemExit("a stream ended without a finish")

    async def throughput(router: Engine, remote: Engine | None = None) -> float:
        """tok/s of 2 x clients requests sent at once: all to `router`, or with `remote` the
        first half to `router` and the second half to `remote` (each half holds every prompt)."""
        todo = requests(args.clients * 2)
        half = len(todo) // 2

        def place(i: int) -> tuple[Engine, str]:
            if remote is None:
                return router, ""  # where the router sends it
            return (router, "local") if i < half else (remote, "B")

        start = time.monotonic()
        done = await asyncio.gather(*(timed(*place(i), r, start) for i, r in enumerate(todo)))
        timeline.append(done)
        return float(sum(d["tokens"] for d in done) / (time.monotonic() - start))

    async with (
        LlamaEngine.open(config) as engine,
        MeshService.open(mesh_config, data, engine) as mesh,
    ):
        router = Router(engine, mesh.node)
        _record_routes(routed)
        if args.phase == "restart":
            pending: set[asyncio.Task[Any]] = set()
            end = time.monotonic() + 120
            out["mesh_open_s"] = time.monotonic() - _T0
            while mesh.first_forward_at is None and time.monotonic() < end:
                if "linked_s" not in out and mesh.links:
                    out["linked_s"] = time.monotonic() - _T0
                # Arrivals every 0.1 s (at most 4 x clients waiting): the box is busy from its
                # first moment, and the first request arriving once a peer is linked can go there.
                if len(pending) < 4 * args.clients:
                    pending.add(asyncio.ensure_future(complete(router, requests(1)[0])))
                _done, pending = await asyncio.wait(pending, timeout=0.1)
            out["start_to_first_forward_s"] = (
                mesh.first_forward_at - _T0 if mesh.first_forward_at else None
            )
            await asyncio.gather(*pending)
            return out
        await complete(engine, requests(1)[0])  # warm up
        code = pairing.open_window(data)
        joined = await asyncio.to_thread(
            subprocess.run,
            [
                "ip",
                "netns",
                "exec",
                args.peer_ns,
                sys.executable,
                "-m",
                "mongars_edge",
                "pair",
                "--join",
                code,
                "--peer",
                f"{args.address}:8765",
                "--data-dir",
                args.peer_data,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if joined.returncode:
            raise SystemExit(f"pairing failed: {joined.stdout}{joined.stderr}")
        end = time.monotonic() + 60
        while not any(p.fresh() for n, p in mesh.peers.items() if n in mesh.links):
            if time.monotonic() > end:
                raise SystemExit("the peer never linked")
            await asyncio.sleep(0.1)
        peer_id = next(n for n in mesh.links)
        remote = RemoteEngine(mesh.node, peer_id, engine, 10.0)
        await complete(remote, requests(1)[0])  # warm up B as A was
        # Rounds alternate A alone (its engine directly), A+B (the router) and A+B split in
        # halves fixed in advance (no router: each box drains its own half, so the gap to the
        # router is what pooling the slots adds), so load from elsewhere on the machine hits
        # every side alike; medians are reported.
        ones, twos, splits = [], [], []
        for _ in range(args.rounds):
            ones.append(await throughput(engine))
            twos.append(await throughput(router))
            splits.append(await throughput(engine, remote))
        out["one_box_tok_s"] = statistics.median(ones)
        out["two_box_tok_s"] = statistics.median(twos)
        out["ratios"] = [t / o for o, t in zip(ones, twos, strict=True)]
        out["split_ratios"] = [t / o for o, t in zip(ones, splits, strict=True)]
        out["forwarded"] = mesh.forwarded
        out["timeline"] = timeline
        await asyncio.sleep(2)  # let the queues drain before measuring latency at low load
        local_ttft: list[float] = []
        remote_ttft: list[float] = []
        for _ in range(args.latency_rounds):
            req = ChatRequest.of([("user", PROMPTS[0])], sampling=Sampling.greedy(1))
            for target, sink in ((engine, local_ttft), (remote, remote_ttft)):
                t = time.perf_counter()
                async for _event in target.stream(req):
                    sink.append(time.perf_counter() - t)
                    break
                await asyncio.sleep(0.05)
        out["local_ttft_p50_ms"] = statistics.median(local_ttft) * 1000
        out["remote_ttft_p50_ms"] = statistics.median(remote_ttft) * 1000
    return out


class _Routes(logging.Handler):
    """The router's debug line names each request's place first: `routing ID: place=...`."""

    def __init__(self, routed: dict[str, str]) -> None:
        super().__init__(logging.DEBUG)
        self.routed = routed

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "routing %s: %s" and isinstance(record.args, tuple):
            request_id, ranked = record.args
            self.routed[str(request_id)] = str(ranked).split("=", 1)[0]


def _record_routes(routed: dict[str, str]) -> None:
    log = logging.getLogger("mongars_edge.mesh.router")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    log.addHandler(_Routes(routed))


def spans(timeline: list[list[dict[str, Any]]]) -> list[str]:
    """Per round: each place's tokens, the time its last request ended, its tok/s over that."""
    lines = []
    for n, done in enumerate(timeline):
        side = ("A alone", "routed ", "split  ")[n % 3]
        parts = []
        for where in sorted({d["where"] for d in done}, key=lambda w: w != "local"):
            mine = [d for d in done if d["where"] == where]
            tokens = sum(d["tokens"] for d in mine)
            end = max(d["end"] for d in mine)
            first = statistics.median(d["first"] for d in mine)
            name = "A" if where == "local" else "B"
            parts.append(
                f"{name}: {len(mine):2d} req {tokens:4d} tok, last end {end:5.1f} s, "
                f"{tokens / end:5.1f} tok/s, first token p50 {first:4.1f} s"
            )
        lines.append(f"    round {n // 3 + 1} {side} " + " | ".join(parts))
    return lines


def model_path(model_id: str, models_from: Path) -> Path:
    """The GGUF of a catalog model: embedded, or pulled into the data dir *models_from*."""
    from mongars_edge.inference.models import ModelStore

    store = ModelStore(models_from)
    entry = store.catalog.get(model_id)
    path = store.path_of(entry) if entry is not None else None
    if path is None or not path.is_file():
        raise SystemExit(
            f"bench/mesh.py: {model_id} is not installed in {models_from}: "
            f"run `mongars-edge models pull {model_id} --data-dir {models_from}`"
        )
    return path


# --- --plain: the same bursts on plain engines, no mesh ------------------------------------------


async def _engine_worker(args: argparse.Namespace) -> None:
    """One plain engine: each line on stdin sends `--burst` requests at once; prints their
    tokens and seconds as a JSON line."""
    from mongars_edge.inference.engine import complete
    from mongars_edge.inference.llama import LlamaEngine

    async with LlamaEngine.open(_engine_config(args)) as engine:
        await complete(engine, _requests(1, args.tokens)[0])  # warm up, as the boxes are
        print("ready", flush=True)
        while await asyncio.to_thread(sys.stdin.readline):
            start = time.monotonic()
            done = await asyncio.gather(
                *(complete(engine, r) for r in _requests(args.burst, args.tokens))
            )
            tokens = sum(r.usage.completion_tokens for r in done if r.usage)
            print(json.dumps({"tokens": tokens, "s": time.monotonic() - start}), flush=True)


class _Engine:
    """A plain engine in its own process, pinned to one core."""

    def __init__(self, args: argparse.Namespace, cpu: int, burst: int, log: IO[str]) -> None:
        cmd = ["taskset", "-c", str(cpu), sys.executable, str(Path(__file__).resolve())]
        cmd += ["--engine-worker", "--burst", str(burst), "--tokens", str(args.tokens)]
        cmd += ["--model", args.model, "--models-from", args.models_from]
        self.log = log  # llama.cpp's log: a pipe nobody reads could fill and stall the engine
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if self.stdout.readline().strip() != "ready":
            self.proc.kill()
            self._fail("did not start")

    def go(self) -> None:
        self.stdin.write("go\n")
        self.stdin.flush()

    def done(self) -> tuple[int, float]:
        line = self.stdout.readline()
        if not line.startswith("{"):  # the engine died mid-burst
            self._fail("stopped")
        got = json.loads(line)
        return int(got["tokens"]), float(got["s"])

    def _fail(self, what: str) -> NoReturn:
        self.proc.wait()
        self.log.seek(0)
        raise SystemExit(f"bench/mesh.py: an engine {what}:\n{self.log.read()[-3000:]}")

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=60)


def plain(args: argparse.Namespace) -> dict[str, Any]:
    """What two cores give without any mesh: one engine on the first core given all 2 x
    clients requests, against two engines (one per core) given half each at once; and the
    half alone, which splits the ratio into the burst's length and the two cores side by side.
    Rounds interleaved, so load from elsewhere hits every side alike."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("bench/mesh.py --plain: needs two cores")
    n = args.clients * 2
    rows: list[dict[str, float]] = []
    with contextlib.ExitStack() as stack:

        def start(cpu: int, burst: int) -> _Engine:
            engine = _Engine(args, cpu, burst, stack.enter_context(tempfile.TemporaryFile("w+")))
            stack.callback(engine.close)
            return engine

        whole, half_a = start(cpus[0], n), start(cpus[0], n // 2)
        half_b = start(cpus[-1], n - n // 2)
        for _ in range(args.rounds):
            whole.go()
            w_tokens, w_s = whole.done()
            half_a.go()
            h_tokens, h_s = half_a.done()
            half_a.go()
            half_b.go()
            (a_tokens, a_s), (b_tokens, b_s) = half_a.done(), half_b.done()
            one, half, two = w_tokens / w_s, h_tokens / h_s, (a_tokens + b_tokens) / max(a_s, b_s)
            rows.append({"one": one, "half": half, "two": two})
    return {
        "requests": n,
        "ratios": [r["two"] / r["one"] for r in rows],
        "burst": [2 * r["half"] / r["one"] for r in rows],
        "side_by_side": [r["two"] / (2 * r["half"]) for r in rows],
        "rounds": rows,
    }


def print_plain(args: argparse.Namespace, results: dict[str, Any]) -> None:
    def line(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}  rounds: {' '.join(f'{v:.2f}' for v in values)}"

    rate = {k: statistics.median(r[k] for r in results["rounds"]) for k in ("one", "half", "two")}
    print(
        f"model {args.model}, plain engines (no mesh), {results['requests']} requests at once; "
        f"tok/s: all on one {rate['one']:.1f}, half on one {rate['half']:.1f}, "
        f"half on each {rate['two']:.1f}\n"
        f"(p) two engines, one per core, half each / one engine, all: {line(results['ratios'])}\n"
        f"    the burst's length, twice half alone / all on one: {line(results['burst'])}\n"
        f"    side by side, both halves at once / twice half alone: "
        f"{line(results['side_by_side'])}"
    )


# --- the driver, in the host namespace ---------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--latency-rounds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per side")
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="catalog id of both boxes' model")
    parser.add_argument("--models-from", default=str(REPO / ".data"), help="where it is pulled")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--timeline", action="store_true", help="each round's per-box spans")
    parser.add_argument(
        "--plain", action="store_true", help="the same bursts on plain engines, no mesh: (p)"
    )
    parser.add_argument("--origin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--burst", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="main", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--peer-ns", help=argparse.SUPPRESS)
    parser.add_argument("--peer-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.origin:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(asyncio.run(_origin(args))), flush=True)
        return
    if args.engine_worker:
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(_engine_worker(args))
        return
    if args.plain:
        plain_results = plain(args)
        if args.json:
            print(json.dumps(plain_results, indent=2))
        else:
            print_plain(args, plain_results)
        return

    from tests.integration.netns import Lab, can_use_netns

    if why := can_use_netns():
        raise SystemExit(f"bench/mesh.py: {why}")
    cpus = sorted(os.sched_getaffinity(0))
    root = Path(tempfile.mkdtemp(prefix="mgs-bench-"))
    results: dict[str, Any] = {}
    with Lab(root, ["a", "b"]) as lab:
        a, b = lab.boxes["a"], lab.boxes["b"]
        b.cpu = cpus[-1]
        b.extra_env = {
            "MONGARS_N_PARALLEL": str(N_PARALLEL),
            "MONGARS_CTX_SIZE": str(N_CTX),
            "MONGARS_MODEL": args.model,
        }
        # Box B serves the same GGUF, linked into its data dir's model store (unless embedded).
        source = model_path(args.model, Path(args.models_from))
        if source.parent.name == "models":
            (b.data_dir / "models").mkdir(parents=True, exist_ok=True)
            (b.data_dir / "models" / source.name).symlink_to(source)
        b.start()
        lab.wait("box B serving", lambda: bool(b.state()), 180)

        def origin(phase: str) -> dict[str, Any]:
            cmd = a.exec_args(
                "taskset",
                "-c",
                str(cpus[0]),
                sys.executable,
                str(Path(__file__).resolve()),
                "--origin",
                "--phase",
                phase,
                "--data",
                str(a.data_dir),
                "--address",
                a.address,
                "--peer-ns",
                b.ns,
                "--peer-data",
                str(b.data_dir),
                "--clients",
                str(args.clients),
                "--tokens",
                str(args.tokens),
                "--latency-rounds",
                str(args.latency_rounds),
                "--rounds",
                str(args.rounds),
                "--model",
                args.model,
                "--models-from",
                args.models_from,
            )
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
            lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
            if done.returncode or not lines:
                raise SystemExit(f"origin failed:\n{done.stdout}\n{done.stderr[-3000:]}")
            data: dict[str, Any] = json.loads(lines[-1])
            return data

        results.update(origin("main"))
        results.update(origin("restart"))
    results["throughput_ratio"] = statistics.median(results["ratios"])
    results["split_ratio"] = statistics.median(results["split_ratios"])
    results["added_latency_ms"] = results["remote_ttft_p50_ms"] - results["local_ttft_p50_ms"]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    first = results.get("start_to_first_forward_s")
    print(
        f"model {args.model}\n"
        f"(a) 2 boxes / 1 box, {args.clients} clients: {results['throughput_ratio']:.2f}x "
        f"({results['two_box_tok_s']:.1f} / {results['one_box_tok_s']:.1f} tok/s; "
        f"{results['forwarded']} forwarded)   target >= 1.8\n"
        f"    rounds: {' '.join(f'{r:.2f}' for r in results['ratios'])}\n"
        f"    the same requests split in fixed halves between A and B, no router: "
        f"{results['split_ratio']:.2f}x\n"
        f"    rounds: {' '.join(f'{r:.2f}' for r in results['split_ratios'])}"
    )
    if args.timeline:
        print("\n".join(spans(results["timeline"])))
    print(
        f"(b) added latency of a forwarded request, p50: {results['added_latency_ms']:.1f} ms "
        f"(ttft {results['remote_ttft_p50_ms']:.1f} vs {results['local_ttft_p50_ms']:.1f} ms)"
        "   target <= 10 ms"
    )
    print(
        f"(c) start to first forwarded request: {first:.2f} s"
        if first is not None
        else "(c) no request was forwarded",
        "  target <= 3 s",
    )


if __name__ == "__main__":
    main()
