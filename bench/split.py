"""Split benchmark: one model over two boxes in network namespaces, against one unconstrained box.

    .venv/bin/python bench/split.py [--model PATH] [--tokens 64]
        [--worker-kind sandboxed|plain] [--json]                                (root)

Two namespaces on a bridge, each box pinned to its own core and held in a cgroup (v1 memory
controller, else v2) whose limit, like its `model_budget_mb`, is too small for the model alone:
box B runs the sandboxed RpcWorker offering that budget behind an RpcGuard (or, plain,
llama.cpp's own server through ctypes: `mongars_edge.split.rpc`), box A is this script
re-executed in its namespace running a SplitEngine (the supervised child) whose plan puts on B
the layers A cannot hold. Until the mesh tunnel lands, A reaches B's RPC
port over the namespaces' veth directly (printed). The baseline, measured in the same run
before and after the split (the faster of the two counts): the same model on one box with no
limit, one thread, pinned to A's core. Prints:
 (a) greedy output of the split identical to the single box
 (b) generation tok/s split / single (target >= 0.5), and the bytes per token on the wire
 (c) the time to load the model across the link, and the bytes it sent
"""

from __future__ import annotations

import sys

_HERE = __file__.rsplit("/", 1)[0] or "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_MODEL = REPO / ".data" / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
RPC_PORT = 50052
PROMPT = "Write a Python function that checks whether a number is prime, with a docstring."
_V1 = Path("/sys/fs/cgroup/memory")
_V2 = Path("/sys/fs/cgroup")


# --- memory limits ----------------------------------------------------------------------------


@contextlib.contextmanager
def cgroup(name: str, limit_mb: int) -> Iterator[Path]:
    """A memory cgroup limited to `limit_mb` (v1 if mounted, else v2); its procs file."""
    if (_V1 / "memory.limit_in_bytes").is_file():
        path = _V1 / name
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
        with contextlib.suppress(OSError):  # no swap accounting on this kernel: no swap either
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit_mb << 20))
    else:
        path = _V2 / name
        path.mkdir()
        (path / "memory.max").write_text(str(limit_mb << 20))
    try:
        yield path / "cgroup.procs"
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:  # processes still leaving
                time.sleep(0.1)


def in_cgroup(procs: Path, cmd: list[str]) -> list[str]:
    """`cmd` run from a shell that first moves itself into the cgroup (before `ip netns exec`,
    which mounts a /sys of its own where the cgroup tree is not)."""
    return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *cmd]


def veth_bytes(ns: str) -> int:
    """Bytes through box B's veth both ways (the wire between the boxes)."""
    out = subprocess.run(
        ["ip", "-n", ns, "-s", "-j", "link", "show", "veth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])


# --- the measured sides -------------------------------------------------------------------------


def _config(model: Path, tokens: int) -> Any:
    from mongars_edge.inference.llama import EngineConfig

    return EngineConfig(
        model_path=model,
        model_id=model.stem,
        n_ctx=1024,
        n_parallel=1,
        n_threads=1,
        n_threads_batch=1,
        cache_slots=0,
        prefix_cache=False,
        # A starved run (this 2-core machine is shared) must finish, however slowly: no 300 s cut.
        request_deadline_s=7200.0,
    )


async def _generate(engine: Any, tokens: int) -> dict[str, Any]:
    from mongars_edge.inference.engine import ChatRequest, Sampling, complete

    request = ChatRequest.of([("user", PROMPT)], sampling=Sampling.greedy(tokens))
    await complete(engine, ChatRequest.of([("user", "Hi")], sampling=Sampling.greedy(4)))
    start = time.monotonic()
    done = await complete(engine, request)
    n = done.usage.completion_tokens if done.usage else 0
    return {
        "text": done.text,
        "finish": done.finish_reason,
        "error": done.error,
        "tokens": n,
        "gen_tok_s": done.timings.generation_tok_s if done.timings else 0.0,
        "wall_s": time.monotonic() - start,
    }


async def _single(args: argparse.Namespace) -> dict[str, Any]:
    from mongars_edge.inference.llama import LlamaEngine

    async with LlamaEngine.open(_config(Path(args.model), args.tokens)) as engine:
        return await _generate(engine, args.tokens)


async def _host(args: argparse.Namespace) -> dict[str, Any]:
    from mongars_edge.split.host import SplitEngine
    from mongars_edge.split.plan import Offer, plan_split

    config = _config(Path(args.model), args.tokens)
    plan = plan_split(
        config.model_id,
        args.n_layer,
        args.need_mb,
        args.budget_mb,
        [Offer(args.worker, args.budget_mb << 20, name="box B")],
    )
    before = veth_bytes(args.worker_ns)
    async with SplitEngine.open(config, plan) as engine:
        loaded = veth_bytes(args.worker_ns)
        out = {"plan": plan.summary(), "load_s": engine.load_s, "load_bytes": loaded - before}
        warm = veth_bytes(args.worker_ns)
        out.update(await _generate(engine, args.tokens))
        out["run_bytes"] = veth_bytes(args.worker_ns) - warm
    return out


async def _worker(args: argparse.Namespace) -> None:
    """Box B: the sandboxed RpcWorker offering the budget, its port on the veth behind a guard
    (what the mesh tunnel will do inside its encrypted link)."""
    from mongars_edge.split import rpc
    from mongars_edge.split.worker import RpcWorker
    from tests.support.rpcserver import GuardedRelay

    worker = RpcWorker(
        Path(args.cache), budget_bytes=args.budget_mb << 20, threads=1, cache_max_bytes=4 << 30
    )
    await worker.start()
    host, port = rpc.parse_endpoint(args.worker)
    relay = GuardedRelay(worker, host, port)
    await relay.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await relay.stop()
        await worker.stop()


# --- the driver, in the host namespace ---------------------------------------------------------


def _need(model: Path) -> tuple[int, int]:
    """The model's layer count and the memory it needs (the tuning profile's estimate)."""
    from mongars_edge.hardware.tuning import model_need_mb
    from mongars_edge.inference import lowlevel

    vocab = lowlevel.load_model(model, vocab_only=True)
    try:
        n_layer = vocab.n_layer
    finally:
        vocab.free()
    return n_layer, model_need_mb("medium", model.stat().st_size >> 20, 1024, 1)


def _run(cmd: list[str], what: str, timeout: float = 1800) -> dict[str, Any]:
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=timeout, cwd=REPO
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a GGUF file")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--worker-kind",
        choices=("sandboxed", "plain"),
        default="sandboxed",
        help="box B: the sandboxed RpcWorker behind RpcGuard, or llama.cpp's plain server",
    )
    parser.add_argument("--side", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-ns", help=argparse.SUPPRESS)
    parser.add_argument("--n-layer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--need-mb", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        import logging

        logging.basicConfig(level=logging.WARNING)
        if args.side == "worker":
            asyncio.run(_worker(args))
            return
        side = _single if args.side == "single" else _host
        print(json.dumps(asyncio.run(side(args))), flush=True)
        return

    from tests.integration.netns import Lab, can_use_netns

    if why := can_use_netns():
        raise SystemExit(f"bench/split.py: {why}")
    model = Path(args.model)
    n_layer, need_mb = _need(model)
    # Each box may hold 60% of what the model needs: neither can run it alone.
    budget_mb = need_mb * 6 // 10
    cpus = sorted(os.sched_getaffinity(0))
    me = str(Path(__file__).resolve())
    root = Path(tempfile.mkdtemp(prefix="mgs-split-"))
    tag = f"mgs-split-{os.getpid()}"
    results: dict[str, Any] = {"model": model.name, "need_mb": need_mb, "budget_mb": budget_mb}
    single_cmd = ["taskset", "-c", str(cpus[0]), sys.executable, me, "--side", "single",
                  "--model", str(model), "--tokens", str(args.tokens)]  # fmt: skip
    # The single box runs before and after the split: a busy machine weighs on both sides alike.
    singles = [_run(single_cmd, "the single box")]
    with (
        Lab(root, ["a", "b"]) as lab,
        cgroup(f"{tag}-a", budget_mb) as procs_a,
        cgroup(f"{tag}-b", budget_mb) as procs_b,
    ):
        a, b = lab.boxes["a"], lab.boxes["b"]
        endpoint = f"{b.address}:{RPC_PORT}"
        worker = subprocess.Popen(
            in_cgroup(
                procs_b,
                b.exec_args("taskset", "-c", str(cpus[-1]), sys.executable, *(
                    ["-m", "mongars_edge.split.rpc", endpoint] if args.worker_kind == "plain"
                    else [me, "--side", "worker", "--worker", endpoint,
                          "--budget-mb", str(budget_mb), "--cache", str(b.data_dir / "cache")]
                )),
            ),
            cwd=REPO,
            env={**os.environ, "RPC_THREADS": "1", "PYTHONPATH": str(REPO)},
            stdout=b.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        a.log_path.touch()
        try:
            from mongars_edge.split import rpc

            lab.wait("B's RPC worker", lambda: _answers(a.exec_args, endpoint), 60)
            results["split"] = _run(
                in_cgroup(
                    procs_a,
                    a.exec_args("taskset", "-c", str(cpus[0]), sys.executable, me, "--side",
                                "host", "--model", str(model), "--tokens", str(args.tokens),
                                "--worker", endpoint, "--worker-ns", b.ns,
                                "--n-layer", str(n_layer), "--need-mb", str(need_mb),
                                "--budget-mb", str(budget_mb)),
                ),
                "the split host",
            )  # fmt: skip
            results["rpc_proto"] = rpc.proto_text(rpc.RPC_PROTO)
        finally:
            worker.terminate()  # the sandboxed worker's own child goes with it
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    singles.append(_run(single_cmd, "the single box"))
    single, split = singles[0], results["split"]
    results["single"] = singles
    # The faster single run is the truer unconstrained box (and the harder baseline).
    results["single_gen_tok_s"] = max(x["gen_tok_s"] for x in singles)
    results["identical"] = all(x["text"] == split["text"] for x in singles)
    texts = (single["text"], split["text"])
    results["diverges_at"] = next(
        (i for i, (a, b) in enumerate(zip(*texts, strict=False)) if a != b),
        None if len(texts[0]) == len(texts[1]) else min(map(len, texts)),
    )
    tok_s = results["single_gen_tok_s"]
    results["ratio"] = split["gen_tok_s"] / tok_s if tok_s else 0.0
    results["bytes_per_token"] = split["run_bytes"] / max(1, split["tokens"] + 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"model {model.name}: needs ~{need_mb} MiB; each box's budget and cgroup limit "
        f"{budget_mb} MiB\nplacement: {split['plan']} (box B = "
        + (
            "llama.cpp's plain RPC server"
            if args.worker_kind == "plain"
            else "the sandboxed RpcWorker behind RpcGuard"
        )
        + f" on {endpoint}, reached over the namespaces' veth directly: the mesh tunnel is "
        "not wired in yet)"
    )
    print(
        f"(a) greedy output identical to one unconstrained box: {results['identical']} "
        f"({split['tokens']} tokens; finish: split {split['finish']}, single "
        f"{' and '.join(str(x['finish']) for x in singles)})"
    )
    at = results["diverges_at"]
    if at is not None:
        print(f"    single: ...{single['text'][max(0, at - 40) : at + 40]!r}")
        print(f"    split:  ...{split['text'][max(0, at - 40) : at + 40]!r}")
    rates = " and ".join(f"{x['gen_tok_s']:.1f}" for x in singles)
    print(
        f"(b) generation split / single: {results['ratio']:.2f}x ({split['gen_tok_s']:.1f} / "
        f"{results['single_gen_tok_s']:.1f} tok/s; the single box before and after: {rates})"
        "   target >= 0.5; "
        f"{results['bytes_per_token'] / 1024:.1f} KiB per token on the wire"
    )
    print(
        f"(c) load across the link: {split['load_s']:.1f} s, "
        f"{split['load_bytes'] / 2**20:.0f} MiB sent"
    )


def _answers(exec_args: Any, endpoint: str) -> bool:
    probe = (
        "import sys; from mongars_edge.split import rpc\n"
        "try:\n rpc.hello(sys.argv[1])\nexcept rpc.SplitError:\n sys.exit(1)"
    )
    done = subprocess.run(
        exec_args(sys.executable, "-c", probe, endpoint),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


if __name__ == "__main__":
    main()
