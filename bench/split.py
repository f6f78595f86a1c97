"""Split benchmark: one model over two boxes in network namespaces, against one unconstrained box.

    .venv/bin/python bench/split.py [--model PATH] [--tokens 64] [--json] [--repack]
        [--direct [--worker-kind sandboxed|plain]]                              (root)

Two namespaces on a bridge, each box pinned to its own core, one inference thread. By default
both boxes are real `mongars-edge serve` processes, paired as `pair` / `pair --join` pair them:
box B sets `split_offer_mb` (its sandboxed RpcWorker offers 60% of what the model needs); box
A's `model` setting is the model and its `model_budget_mb` that same 60%: the tiny model
answers meanwhile (for the 135M: none), and once paired, its model manager runs the model split
across B through the mesh's encrypted tunnel (every command checked by B's RpcGuard). Each box
is held in a memory cgroup (v1, else v2) of its budget plus SERVE_ROOM_MB for the rest of the
box; the peaks are printed. All is measured through A's HTTP API (OpenAI chat completions,
streamed, greedy): the baseline is box A restarted with no budget and no cgroup, the model its
own, before and after the split (the faster counts), with the same engine settings:
llama.cpp's plain CPU kernels (`cpu_repack` off; `--repack`: as shipped) in both runs, the
kernels B's RPC worker runs. The wire is A's veth (the tunnel's encrypted frames, the mesh's
gossip, IP headers).

`--direct`: no mesh; A is this script re-executed in its namespace running a SplitEngine that
reaches B's worker port over the veth directly (the RpcWorker behind an RpcGuard relay, or
`--worker-kind plain`: llama.cpp's own server), each box in a cgroup of its budget alone.

Prints which layers lived where, then:
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
from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from tests.integration.netns import Box

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
    from mongars_edge.split.select import split_shape

    config = _config(Path(args.model), args.tokens)
    n_layer, fixed = split_shape(config)
    plan = plan_split(
        config.model_id,
        n_layer,
        args.need_mb,
        args.budget_mb,
        [Offer(args.worker, args.budget_mb << 20, name="box B")],
        fixed,
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


def _need(model: Path) -> int:
    """The memory the model needs with a 1024-token context (the tuning profile's estimate)."""
    from mongars_edge.hardware.tuning import model_need_mb

    return model_need_mb("medium", model.stat().st_size >> 20, 1024, 1)


def _run(cmd: list[str], what: str, timeout: float = 1800) -> dict[str, Any]:
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=timeout, cwd=REPO
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


# --- the mesh path (default): two real `serve` boxes, paired ------------------------------------

#: What a `serve` box holds beside its model budget (web, embedder, the tiny model that answers
#: until the split loads): its cgroup's limit is the budget plus this.
SERVE_ROOM_MB = 1024
_BOX_ENV = {
    "MONGARS_N_THREADS": "1",
    "MONGARS_N_PARALLEL": "1",
    "MONGARS_CTX_SIZE": "1024",
    "MONGARS_STT": "off",
    "MONGARS_SPEECH": "off",
    "MONGARS_WYOMING_PORT": "0",
    # A starved run (this 2-core machine is shared) must finish, however slowly.
    "MONGARS_REQUEST_DEADLINE_S": "7200",
}


def _client(args: argparse.Namespace) -> dict[str, Any]:
    """In A's namespace: box A over its HTTP API (with --await-split, until its model runs
    split; one warm-up, the greedy reply streamed and timed, /health's split); bytes counted
    on A's veth."""
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}  # and the token, once the box wrote it

    def request(path: str, body: dict[str, Any] | None = None) -> urllib.request.Request:
        data = json.dumps(body).encode() if body is not None else None
        return urllib.request.Request(args.url + path, data=data, headers=headers)

    def call(path: str, body: dict[str, Any] | None = None) -> Any:
        with urllib.request.urlopen(request(path, body), timeout=7200) as resp:
            return json.loads(resp.read())

    def wire() -> int:
        stats = Path("/sys/class/net/veth0/statistics")
        return int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())

    def chat(text: str, n: int, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": n,
            "temperature": 0,
            "memory": False,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    end = time.monotonic() + 600
    while True:  # the box is still starting
        try:
            call("/health")
            break
        except (urllib.error.URLError, ConnectionError) as exc:
            if time.monotonic() > end:
                raise SystemExit(f"box A never answered: {exc}") from None
            time.sleep(0.5)
    headers["Authorization"] = "Bearer " + Path(args.token_file).read_text().strip()
    out: dict[str, Any] = {}
    model = args.model_id
    if args.await_split:
        # Box A chose the model (its `model` setting) and cannot hold it: it tries it split every
        # 30 s. Ready to count the wire: the driver pairs the boxes now.
        print("ready", flush=True)
        before, end = wire(), time.monotonic() + 900
        while (split := call("/health").get("split") or {}).get("state") != "serving":
            if time.monotonic() > end:
                problems = call("/health").get("problems")
                raise SystemExit(f"box A never ran the model split: {problems}")
            time.sleep(0.5)
        out["load_s"] = split.get("load_s")
        out["load_bytes"] = wire() - before  # the load, and the gossip since pairing
    call("/v1/chat/completions", chat("Hi", 4, False))
    pieces: list[str] = []
    stamps: list[float] = []
    finish = None
    usage: dict[str, Any] = {}
    before, start = wire(), time.monotonic()
    with urllib.request.urlopen(
        request("/v1/chat/completions", chat(PROMPT, args.tokens, True)), timeout=7200
    ) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                if piece := (choice.get("delta") or {}).get("content"):
                    pieces.append(piece)
                    stamps.append(time.monotonic())
                finish = choice.get("finish_reason") or finish
    n = int(usage.get("completion_tokens", len(stamps)))
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    out.update(
        model=model,
        text="".join(pieces),
        finish=finish,
        tokens=n,
        # From the first token to the last, as seen by a client: generation alone.
        gen_tok_s=(n - 1) / span if span else 0.0,
        ttft_s=stamps[0] - start if stamps else None,
        run_bytes=wire() - before,
        split=call("/health").get("split"),
    )
    return out


def _catalog_need(model: Path, root: Path) -> tuple[str, int, int]:
    """The model's id (the catalog's, by file name), layer count and the memory a box with
    _BOX_ENV's context and parallel sequences needs for it (the model manager's estimate)."""
    from mongars_edge.hardware.tuning import model_need_mb
    from mongars_edge.inference import lowlevel
    from mongars_edge.inference.models import ModelStore

    store = ModelStore(root)
    model_id, _ = store.resolve(str(model))
    entry = store.catalog.get(model_id)
    vocab = lowlevel.load_model(model, vocab_only=True)
    try:
        n_layer = vocab.n_layer
    finally:
        vocab.free()
    tier = entry.tier if entry is not None else "medium"
    size_mb = (entry.size_bytes if entry and entry.size_bytes else model.stat().st_size) >> 20
    ctx, parallel = int(_BOX_ENV["MONGARS_CTX_SIZE"]), int(_BOX_ENV["MONGARS_N_PARALLEL"])
    return model_id, n_layer, model_need_mb(tier, size_mb, ctx, parallel)


def _peak_mb(procs: Path) -> int:
    """The most memory the cgroup's processes held at once."""
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        with contextlib.suppress(OSError, ValueError):
            return int((procs.parent / name).read_text()) >> 20
    return 0


def _mesh(args: argparse.Namespace) -> None:
    """Box B: `serve` offering its budget (split_offer_mb); box A: `serve` whose model_budget_mb
    is too small, paired with B and asked for the model over its API: it splits it across B
    through the mesh's tunnel. The baseline: box A again, unconstrained, the model its own."""
    from tests.integration.netns import HTTP_PORT, MESH_PORT, Lab, can_use_netns
    from tests.support.env import clean_env

    if why := can_use_netns():
        raise SystemExit(f"bench/split.py: {why}")
    model = Path(args.model).resolve()
    root = Path(tempfile.mkdtemp(prefix="mgs-split-"))
    model_id, n_layer, need_mb = _catalog_need(model, root / "catalog")
    budget_mb = need_mb * 6 // 10  # neither box can hold the model alone
    cpus = sorted(os.sched_getaffinity(0))
    me = str(Path(__file__).resolve())
    tag = f"mgs-split-{os.getpid()}"
    results: dict[str, Any] = {
        "model": model.name,
        "need_mb": need_mb,
        "budget_mb": budget_mb,
        "n_layer": n_layer,
        "path": "mesh",
        "cpu_repack": args.repack,
    }
    # A's engine settings, alone and split: llama.cpp repacks Q4_K (and other) weights on an
    # AVX2 or Arm dot-product CPU for faster kernels whose sums round differently from the
    # plain kernels that B's RPC worker runs (its buffers are plain): unless asked, A runs the
    # plain kernels too, in both runs, so the split computes every layer as the single box does.
    a_env = {"MONGARS_CPU_REPACK": "true" if args.repack else "false"}

    def start(box: Box, cpu: int, procs: Path | None, **env: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (box.data_dir / "mesh" / "state.json").unlink()  # fresh once this run writes it
        cmd = box.exec_args("taskset", "-c", str(cpu), sys.executable, "-m", "mongars_edge",
                            "serve", "--data-dir", str(box.data_dir), "--host", box.address,
                            "--port", str(HTTP_PORT))  # fmt: skip
        log = box.log_path.open("ab")
        box.stopped = False
        box.proc = subprocess.Popen(
            in_cgroup(procs, cmd) if procs is not None else cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(**{**_BOX_ENV, **env}),
            cwd=REPO,
        )
        log.close()

    def client(box: Box, *, pair_with: Box | None = None) -> dict[str, Any]:
        """The client in the box's namespace; with `pair_with`, it waits for the split, and
        the boxes are paired once it counts the wire."""
        cmd = box.exec_args(sys.executable, me, "--side", "client", "--tokens", str(args.tokens),
                            "--url", f"http://{box.address}:{HTTP_PORT}", "--model-id", model_id,
                            "--token-file", str(box.data_dir / "local-admin.token"),
                            *(["--await-split"] if pair_with else []))  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
        )
        try:
            if pair_with is not None:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() == "ready":
                    _pair(box, pair_with, MESH_PORT)
            out, err = proc.communicate(timeout=3600)
        finally:
            if proc.poll() is None:
                proc.kill()
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if proc.returncode or not lines:
            raise SystemExit(
                f"the client of box {box.name} failed:\n{out[-2000:]}\n{err[-3000:]}\n"
                f"--- box {box.name}'s log:\n{box.log()[-3000:]}"
            )
        data: dict[str, Any] = json.loads(lines[-1])
        return data

    def single(a: Box) -> dict[str, Any]:
        """Box A unconstrained: the same settings, no budget, no cgroup, the model its own."""
        start(a, cpus[0], None, MONGARS_MODEL=str(model), **a_env)
        try:
            return client(a)
        finally:
            a.stop()

    with (
        Lab(root, ["a", "b"]) as lab,
        cgroup(f"{tag}-a", budget_mb + SERVE_ROOM_MB) as procs_a,
        cgroup(f"{tag}-b", budget_mb + SERVE_ROOM_MB) as procs_b,
    ):
        a, b = lab.boxes["a"], lab.boxes["b"]
        start(b, cpus[-1], procs_b, MONGARS_SPLIT_OFFER_MB=str(budget_mb))
        singles = [single(a)]
        # Box A chooses the model and its budget is too small: the tiny model answers
        # meanwhile (for the 135M: nothing does), until A, paired, runs it split across B.
        start(a, cpus[0], procs_a, MONGARS_MODEL=str(model),
              MONGARS_MODEL_BUDGET_MB=str(budget_mb), **a_env)  # fmt: skip
        lab.wait("both boxes' mesh", lambda: bool(a.state() and b.state()), 600)
        results["split"] = client(a, pair_with=b)
        results["linked"] = _linked(a, b) and _linked(b, a)
        a.stop()
        results["peak_mb"] = {"a": _peak_mb(procs_a), "b": _peak_mb(procs_b)}
        singles.append(single(a))
        b.stop()
    _report(args, results, singles)


def _pair(member: Box, joiner: Box, mesh_port: int) -> None:
    """`pair` on the member (its code), `pair --join CODE --peer` on the joiner."""
    proc = subprocess.Popen(
        member.exec_args(sys.executable, "-m", "mongars_edge", "pair", "--data-dir",
                         str(member.data_dir), "--ttl", "120"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("pairing code: "):
        proc.kill()
        raise SystemExit(f"pairing failed: {line}{proc.communicate()[0]}")
    joined = joiner.cli("pair", "--join", line.split()[-1], "--peer",
                        f"{member.address}:{mesh_port}")  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    if joined.returncode or proc.returncode:
        raise SystemExit(f"pairing failed: {joined.stdout}{joined.stderr}{out}")


def _linked(box: Box, other: Box) -> bool:
    other_id = other.state().get("node_id")
    return any(p["node_id"] == other_id and p["linked"] for p in box.state().get("peers", []))


def _direct(args: argparse.Namespace) -> None:
    """The old path: A's SplitEngine reaches B's worker port over the veth, no mesh."""
    from tests.integration.netns import Lab, can_use_netns

    if why := can_use_netns():
        raise SystemExit(f"bench/split.py: {why}")
    model = Path(args.model)
    need_mb = _need(model)
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
                                "--need-mb", str(need_mb),
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
    results["path"] = args.worker_kind
    results["endpoint"] = endpoint
    _report(args, results, singles)


def _report(
    args: argparse.Namespace, results: dict[str, Any], singles: list[dict[str, Any]]
) -> None:
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
    need_mb, budget_mb = results["need_mb"], results["budget_mb"]
    print(f"model {results['model']}: needs ~{need_mb} MiB; each box's budget {budget_mb} MiB")
    if results["path"] == "mesh":
        place = split.get("split") or {}
        where = ", ".join(
            f"{p['layers']} layers {'on A' if p['where'] == 'local' else 'on ' + p['where']}"
            f" ({p['need_mb']} of its {p['budget_mb']} MiB)"
            for p in place.get("places", [])
        )
        peak = results["peak_mb"]
        print(
            f"placement (A's /health): {where or 'NOT SPLIT'} of {place.get('n_layer')}; "
            f"state {place.get('state')}\n"
            "path: two `mongars-edge serve` boxes, paired; B offers its budget "
            "(split_offer_mb: the sandboxed RpcWorker), A reaches it through the mesh's "
            "encrypted tunnel, every command checked by B's RpcGuard\n"
            f"box A's cpu_repack: {'on' if results['cpu_repack'] else 'off'}, alone and split; "
            f"cgroups: budget + {SERVE_ROOM_MB} MiB for the rest of each box; peak A "
            f"{peak['a']} MiB, B {peak['b']} MiB "
            "(A's model setting; it runs it split as soon as B's offer reaches it)"
        )
    else:
        print(
            f"placement: {split['plan']} (box B = "
            + (
                "llama.cpp's plain RPC server"
                if results["path"] == "plain"
                else "the sandboxed RpcWorker behind RpcGuard"
            )
            + f" on {results['endpoint']}, reached over the namespaces' veth directly, no mesh;"
            f" cgroup limit {budget_mb} MiB each)"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a GGUF file")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--repack",
        action="store_true",
        help="box A as shipped: llama.cpp's repacked CPU kernels (cpu_repack on), whose sums "
        "round unlike the plain kernels of B's worker (the default: cpu_repack off on A, "
        "alone and split: the same kernels everywhere, greedy output comparable bit for bit)",
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="no mesh: A's split engine reaches B's RPC worker over the veth directly",
    )
    parser.add_argument(
        "--worker-kind",
        choices=("sandboxed", "plain"),
        default="sandboxed",
        help="with --direct, box B: the sandboxed RpcWorker behind RpcGuard, or llama.cpp's "
        "plain server",
    )
    parser.add_argument("--side", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-ns", help=argparse.SUPPRESS)
    parser.add_argument("--need-mb", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--budget-mb", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-id", help=argparse.SUPPRESS)
    parser.add_argument("--await-split", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        import logging

        logging.basicConfig(level=logging.WARNING)
        if args.side == "worker":
            asyncio.run(_worker(args))
        elif args.side == "client":
            print(json.dumps(_client(args)), flush=True)
        else:
            side = _single if args.side == "single" else _host
            print(json.dumps(asyncio.run(side(args))), flush=True)
        return
    if args.direct:
        _direct(args)
    else:
        _mesh(args)


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
