"""HTTP benchmark: the chat path through uvicorn + SSE + recall, against the engine called
directly, in the same process and the same run.

    .venv/bin/python bench/http_api.py [--rounds R] [--tokens N] [--threads T] [--json]

Prints:
 (a) generation tok/s seen by an HTTP streaming client / tok/s of engine.stream() called
     directly with the very same assembled prompt (target >= 0.97);
 (b) time to first token added by HTTP + the chat pipeline (auth, recall of the user's memories,
     language, style, prompt budget), p50 over the rounds (target <= 20 ms). Measured on each
     HTTP request itself: (client sent -> the engine is handed the request) + (the engine
     yields its first token -> the client has parsed it), with a timing shim around the engine.
     The difference of the two TTFT medians is printed too, as a cross-check: it carries the
     noise of two ~1 s prefills.
 (e) prefix reuse through the pipeline: a real conversation over HTTP (the user's memories
     recalled into it): the second turn's time to first token with the first turn's KV kept /
     with the prefix cache dropped before it (target <= 0.3); and the first turn of a new
     conversation (the persona and system prefix kept from another one) / the same first turn
     cold (target <= 0.5), with its time to first token.
Both sides are greedy on the same prompt, with the prefix cache dropped before every run, and
the runs alternate. Rates count tokens after the first over the time since the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from mongars_edge.chat.pipeline import Turn
from mongars_edge.inference.engine import (
    ChatRequest,
    Engine,
    Message,
    Prompt,
    Sampling,
    TokenEvent,
)
from mongars_edge.inference.models import ModelStore
from mongars_edge.runtime import Runtime
from mongars_edge.settings import load_settings
from mongars_edge.web import create_app

QUESTION = "Tell me a long story about a lighthouse keeper and her cat."
MEMORIES = [
    "The user lives in Rimouski.",
    "The user's cat is named Biscuit.",
    "The user prefers short answers in the morning.",
    "The user works as a nurse at night.",
    "The user is learning to sail.",
    "The user's sister is called Maude.",
    "The user is allergic to peanuts.",
    "The user likes lighthouses and old maps.",
]


class Stamped:
    """The chat engine, noting when each request reaches it and when its first token leaves."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.handed: list[float] = []
        self.first: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def prepare(self, request: ChatRequest) -> Prompt:
        return await self.inner.prepare(request)

    async def stream(self, request: ChatRequest | Prompt) -> AsyncIterator[TokenEvent]:
        self.handed.append(time.perf_counter())
        first = True
        async for event in self.inner.stream(request):
            if first and event.text:
                self.first.append(time.perf_counter())
                first = False
            yield event


def _rate(times: list[float]) -> float:
    if len(times) < 3 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


async def _direct(runtime: Runtime, uid: int, n: int) -> tuple[float, float, float]:
    turn = Turn(
        messages=(Message("user", QUESTION),),
        sampling=Sampling(temperature=0.0, max_tokens=n),
    )
    t_prepare = time.perf_counter()
    prepared = await runtime.chat.prepare(turn, uid)
    prepare_s = time.perf_counter() - t_prepare
    engine = runtime.chat_engine()
    t0 = time.perf_counter()
    stamps: list[float] = []
    async for event in engine.stream(prepared.prompt):
        if event.text:
            stamps.append(time.perf_counter())
    return stamps[0] - t0, _rate(stamps), prepare_s


async def _http(
    client: httpx.AsyncClient, headers: dict[str, str], n: int, shim: Stamped
) -> tuple[float, float, float, float]:
    body = {
        "model": "mongars",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": n,
        "temperature": 0,
        "stream": True,
    }
    stamps: list[float] = []
    t0 = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    before, after = shim.handed[-1] - t0, stamps[0] - shim.first[-1]
    return stamps[0] - t0, _rate(stamps), before, after


# Questions, so that no turn becomes a recalled statement of a later one: every run of a round
# sees the same memories.
WARM = "Peux-tu me parler de la cuisine de la Gaspésie, en détail?"
FIRST = "Peux-tu me raconter l'histoire de Rimouski, en détail?"
SECOND = "Et qu'est-ce qu'on peut visiter là-bas l'été?"


async def _ttft(
    client: httpx.AsyncClient, headers: dict[str, str], text: str, conversation: Any, n: int
) -> tuple[float, Any]:
    """(time to the first streamed token, the conversation id) of one turn over HTTP."""
    body = {
        "model": "mongars",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": n,
        "temperature": 0,
        "stream": True,
        "conversation_id": conversation,
    }
    first = 0.0
    t0 = time.perf_counter()
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        conv = resp.headers.get("x-conversation-id")
        async for line in resp.aiter_lines():
            if not first and line.startswith("data: ") and '"content":"' in line:
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
    return first, conv


async def _reuse_round(
    client: httpx.AsyncClient, headers: dict[str, str], engine: Any, n: int
) -> dict[str, float]:
    """One round of (e): a new conversation's first turn after another conversation (the
    persona and system prefix cached) and cold; its second turn with the first kept and cold."""
    out: dict[str, float] = {}
    await engine.drop_prefix_cache()
    await _ttft(client, headers, WARM, "new", n)
    out["first_new_conversation"], warm_conv = await _ttft(client, headers, FIRST, "new", n)
    out["second_reuse"], _ = await _ttft(client, headers, SECOND, int(warm_conv), 4)
    await engine.drop_prefix_cache()
    out["first_cold"], cold_conv = await _ttft(client, headers, FIRST, "new", n)
    await engine.drop_prefix_cache()
    out["second_cold"], _ = await _ttft(client, headers, SECOND, int(cold_conv), 4)
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "mesh": False,
        "speech": "off",
        "stt": "off",
        "wyoming_port": 0,
        "n_parallel": 2,
        # A catalog id is found where `make serve` pulled it (.data), as a path: this run's
        # own data dir is new and empty.
        "model": str(ModelStore(Path(args.models_from)).resolve(args.model)[1]),
    }
    if args.threads:
        overrides["n_threads"] = args.threads
    settings = load_settings(environ={}, cli=overrides)
    async with Runtime(settings) as runtime:
        user = await runtime.accounts.add_user("bench", "bench-password-1")
        token = await runtime.accounts.create_token(user)
        for text in MEMORIES:
            await runtime.memory.add_memory(user.id, text)
        await runtime.memory.flush_vectors()
        engine = runtime.engine
        assert engine is not None
        model_id = engine.info.id
        shim = Stamped(runtime.chat_engine())
        runtime.chat._engine = lambda: shim
        config = uvicorn.Config(
            create_app(runtime), host="127.0.0.1", port=0, log_config=None, lifespan="off"
        )
        server = uvicorn.Server(config)
        serve = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        headers = {"Authorization": f"Bearer {token}"}
        direct: list[tuple[float, float, float]] = []
        http: list[tuple[float, float, float, float]] = []
        reuse: list[dict[str, float]] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            await _http(client, headers, 8, shim)  # warm-up: embedder, sockets, caches
            await _direct(runtime, user.id, 8)
            for _ in range(args.rounds):
                await engine.drop_prefix_cache()
                direct.append(await _direct(runtime, user.id, args.tokens))
                await engine.drop_prefix_cache()
                http.append(await _http(client, headers, args.tokens, shim))
                reuse.append(await _reuse_round(client, headers, engine, args.tokens))
        server.should_exit = True
        await serve
    direct_rate = statistics.median(r for _t, r, _n in direct)
    http_rate = statistics.median(h[1] for h in http)
    ttft_direct = statistics.median(t for t, _r, _n in direct)
    ttft_http = statistics.median(h[0] for h in http)
    difference = [h[0] - d[0] for h, d in zip(http, direct, strict=True)]
    prepare_ms = statistics.median(p for _t, _r, p in direct) * 1000
    med = {k: statistics.median(r[k] for r in reuse) for k in reuse[0]}
    return {
        "model": model_id,
        "rounds": args.rounds,
        "tokens": args.tokens,
        "direct_tok_s": round(direct_rate, 1),
        "http_tok_s": round(http_rate, 1),
        "http_over_direct": round(http_rate / direct_rate, 3),
        "ttft_direct_ms": round(ttft_direct * 1000, 1),
        "ttft_http_ms": round(ttft_http * 1000, 1),
        "ttft_added_p50_ms": round(statistics.median(h[2] + h[3] for h in http) * 1000, 1),
        "to_engine_p50_ms": round(statistics.median(h[2] for h in http) * 1000, 1),
        "from_engine_p50_ms": round(statistics.median(h[3] for h in http) * 1000, 1),
        "ttft_difference_p50_ms": round(statistics.median(difference) * 1000, 1),
        "recall_memories": len(MEMORIES),
        "pipeline_prepare_p50_ms": round(prepare_ms, 1),
        "reuse_ms": {k: round(v * 1000, 1) for k, v in med.items()},
        "e_second_turn_reuse_over_cold": round(med["second_reuse"] / med["second_cold"], 3),
        "e_new_conversation_over_cold": round(med["first_new_conversation"] / med["first_cold"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalog id or GGUF")
    parser.add_argument("--models-from", default=".data", help="data dir holding pulled models")
    parser.add_argument("--json", action="store_true")
    result = asyncio.run(main(parser.parse_args()))
    if parser.parse_args().json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model {result['model']}, {result['rounds']} rounds")
        print(
            f"(a) tokens/s HTTP stream / engine direct: {result['http_over_direct']:.3f}"
            f"  ({result['http_tok_s']} / {result['direct_tok_s']} tok/s; target >= 0.97)"
        )
        print(
            f"(b) time to first token added by HTTP + recall, p50: "
            f"{result['ttft_added_p50_ms']} ms  ({result['recall_memories']} memories; "
            "target <= 20 ms)"
        )
        print(
            f"    request sent -> engine: {result['to_engine_p50_ms']} ms; engine's first token "
            f"-> client: {result['from_engine_p50_ms']} ms (p50s)"
        )
        print(
            f"    cross-check, TTFT HTTP {result['ttft_http_ms']} ms - direct "
            f"{result['ttft_direct_ms']} ms, p50 of differences: "
            f"{result['ttft_difference_p50_ms']} ms"
        )
        print(
            f"    of which the pipeline's prepare (recall, style, budget), p50: "
            f"{result['pipeline_prepare_p50_ms']} ms"
        )
        ms = result["reuse_ms"]
        print(
            f"(e) second turn TTFT over HTTP: reuse {ms['second_reuse']} ms / cold "
            f"{ms['second_cold']} ms = {result['e_second_turn_reuse_over_cold']}  (target <= 0.3)"
        )
        print(
            f"    first turn of a new conversation: {ms['first_new_conversation']} ms / cold "
            f"{ms['first_cold']} ms = {result['e_new_conversation_over_cold']}  (target <= 0.5)"
        )
