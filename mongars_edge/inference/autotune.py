"""`mongars-edge bench`: measure the engine on this box and write the tuning profile it will use.

Tried in turn, each with the best value found so far: thread counts (generation and prompt
speed), sequences decoded together (aggregate generation speed) and prompt batch sizes. The
heuristic profile stays the starting point; measured choices replace its guesses and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mongars_edge.datadir import DataDir
from mongars_edge.inference.engine import ChatRequest, Sampling, complete
from mongars_edge.inference.llama import EngineConfig, LlamaEngine
from mongars_edge.settings import Settings

if TYPE_CHECKING:
    from mongars_edge.hardware.tuning import ModelOption

Echo = Callable[[str], None]
_PROMPT = " ".join(
    "The quick brown fox jumps over the lazy dog near the river bank at dawn." for _ in range(24)
)
_WITHIN = 0.05  # a choice must beat a cheaper one by more than this to be taken
# Slower than this, a spoken or read answer lags behind the listener: `bench` demotes an auto
# model that generates slower on this box (one stream, best thread count).
MIN_CHAT_TOK_S = 5.0


def _request(text: str, n: int) -> ChatRequest:
    return ChatRequest.of([("user", text)], sampling=Sampling.greedy(n))


async def _gen_rate(engine: LlamaEngine, streams: int, n_tokens: int) -> float:
    """Aggregate generated tokens per second over `streams` concurrent greedy requests."""
    requests = [_request(f"Tell a short story number {i}.", n_tokens) for i in range(streams)]
    start = time.perf_counter()
    done = await asyncio.gather(*(complete(engine, r) for r in requests))
    elapsed = time.perf_counter() - start
    tokens = sum(c.usage.completion_tokens for c in done if c.usage)
    return tokens / elapsed if elapsed > 0 else 0.0


async def _prompt_rate(engine: LlamaEngine) -> float:
    """Prompt tokens per second for one long prompt (time to its first token)."""
    done = await complete(engine, _request(_PROMPT, 1))
    if done.usage is None or done.timings is None or done.timings.ttft_s <= 0:
        return 0.0
    return done.usage.prompt_tokens / done.timings.ttft_s


def demoted(model_id: str, options: list[ModelOption]) -> str:
    """The next smaller model the profile could choose ("" when `model_id` is the smallest)."""
    from mongars_edge.hardware.tuning import TIERS

    def rank(o: ModelOption) -> tuple[int, int]:
        return (TIERS.index(o.tier) if o.tier in TIERS else 0, o.size_mb)

    current = next((o for o in options if o.id == model_id), None)
    if current is None:
        return ""
    smaller = [o for o in options if rank(o) < rank(current)]
    return max(smaller, key=rank).id if smaller else ""


def _best(results: dict[int, float], prefer_small: bool = True) -> int:
    top = max(results.values())
    ordered = sorted(results) if prefer_small else sorted(results, reverse=True)
    return next(k for k in ordered if results[k] >= top * (1 - _WITHIN))


async def measure(
    base: EngineConfig, cpu_count: int, *, quick: bool, echo: Echo | None
) -> dict[str, Any]:
    """Run the candidates; returns the measurements and the chosen values."""
    say = echo or (lambda _s: None)
    n_gen = 24 if quick else 48

    def engine_with(**changes: Any) -> contextlib.AbstractAsyncContextManager[LlamaEngine]:
        return LlamaEngine.open(dataclasses.replace(base, **changes))

    threads = sorted(
        {max(1, cpu_count), max(1, cpu_count // 2)} | (set() if quick else {max(1, cpu_count - 1)})
    )
    gen_by_threads: dict[int, float] = {}
    prompt_by_threads: dict[int, float] = {}
    for t in threads:
        async with engine_with(n_threads=t, n_threads_batch=t, n_parallel=1) as engine:
            await _gen_rate(engine, 1, 8)  # warm-up: first graphs are built and cached
            gen_by_threads[t] = await _gen_rate(engine, 1, n_gen)
            prompt_by_threads[t] = await _prompt_rate(engine)
        say(
            f"threads {t}: generation {gen_by_threads[t]:.1f} tok/s, "
            f"prompt {prompt_by_threads[t]:.0f} tok/s"
        )
    n_threads = _best(gen_by_threads, prefer_small=False)
    n_threads_batch = _best(prompt_by_threads, prefer_small=False)

    parallel_candidates = [1, 2, 4] if quick else [1, 2, 4, 8]
    agg: dict[int, float] = {}
    async with engine_with(
        n_threads=n_threads, n_threads_batch=n_threads_batch, n_parallel=max(parallel_candidates)
    ) as engine:
        await _gen_rate(engine, max(parallel_candidates), 8)
        for n in parallel_candidates:
            agg[n] = await _gen_rate(engine, n, n_gen)
            say(f"parallel {n}: aggregate generation {agg[n]:.1f} tok/s")
    # More sequences cost KV memory and per-stream speed: take more only if it clearly pays.
    n_parallel = _best(agg)

    batch_rates: dict[int, float] = {}
    for n_batch in [256, 512] if quick else [128, 256, 512]:
        async with engine_with(
            n_threads=n_threads,
            n_threads_batch=n_threads_batch,
            n_parallel=1,
            n_batch=n_batch,
            n_ubatch=n_batch,
        ) as engine:
            await complete(engine, _request("warm up", 2))
            batch_rates[n_batch] = await _prompt_rate(engine)
        say(f"batch {n_batch}: prompt {batch_rates[n_batch]:.0f} tok/s")
    n_batch = _best(batch_rates)
    return {
        "threads": {"generation_tok_s": gen_by_threads, "prompt_tok_s": prompt_by_threads},
        "parallel": {"aggregate_tok_s": agg},
        "batch": {"prompt_tok_s": batch_rates},
        "chosen": {
            "n_threads": n_threads,
            "n_threads_batch": n_threads_batch,
            "n_parallel": n_parallel,
            "n_batch": n_batch,
            "n_ubatch": n_batch,
        },
    }


def run_autotune(
    settings: Settings, *, quick: bool = False, echo: Echo | None = None
) -> dict[str, Any]:
    """Measure, write `data_dir/tuning.json` (source "measured"), and return a report."""
    from mongars_edge.hardware.probe import probe
    from mongars_edge.hardware.tuning import profile_for
    from mongars_edge.inference.catalog import auto_options
    from mongars_edge.inference.manager import AUTO, model_spec
    from mongars_edge.inference.models import ModelStore

    data_dir = settings.resolved_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    facts = probe(settings.sysroot, data_dir)
    options = auto_options()
    heuristic = profile_for(facts, options)
    model_id, path = ModelStore(data_dir).resolve(model_spec(settings, heuristic))
    if echo:
        echo(
            f"measuring {model_id} on {facts.cpu_count} CPU cores (heuristic: "
            f"{json.dumps(heuristic.summary())})"
        )
    base = EngineConfig(
        model_path=path,
        model_id=model_id,
        n_ctx=1024,
        n_parallel=1,
        n_threads=heuristic.n_threads,
        n_threads_batch=heuristic.n_threads_batch,
        n_batch=heuristic.n_batch,
        n_ubatch=min(heuristic.n_ubatch, heuristic.n_batch),
        n_gpu_layers=heuristic.n_gpu_layers,
        cache_slots=0,
        prefix_cache=False,
    )
    report = asyncio.run(measure(base, facts.cpu_count, quick=quick, echo=echo))
    chosen = report["chosen"]
    reasons = dict(heuristic.reasons)
    gen = report["threads"]["generation_tok_s"]
    reasons["n_threads"] = f"measured: {gen[chosen['n_threads']]:.1f} tok/s generation"
    reasons["n_threads_batch"] = (
        f"measured: {report['threads']['prompt_tok_s'][chosen['n_threads_batch']]:.0f} tok/s prompt"
    )
    agg = report["parallel"]["aggregate_tok_s"]
    reasons["n_parallel"] = (
        f"measured: {agg[chosen['n_parallel']]:.1f} tok/s aggregate vs {agg[1]:.1f} alone"
    )
    reasons["n_batch"] = f"measured: best prompt speed with {model_id}"
    model = heuristic.model
    best_gen = gen[chosen["n_threads"]]
    if settings.model == AUTO and model_id == heuristic.model and best_gen < MIN_CHAT_TOK_S:
        smaller = demoted(heuristic.model, options)
        if smaller:
            reasons["model"] = (
                f"measured {best_gen:.1f} tok/s with {model_id}, below the {MIN_CHAT_TOK_S:g} "
                f"tok/s a conversation needs: {smaller} instead"
            )
            model = smaller
    profile = dataclasses.replace(
        heuristic, **chosen, model=model, reasons=reasons, source="measured"
    )
    target = DataDir(data_dir).tuning_profile
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=2), encoding="utf-8")
    os.replace(tmp, target)
    report["model"] = model_id
    report["profile"] = profile.to_dict()
    report["written"] = str(target)
    if echo:
        echo(f"wrote {target}: " + json.dumps(profile.summary()))
    out: dict[str, Any] = json.loads(json.dumps(report))  # int keys -> strings, as in --json
    return out
